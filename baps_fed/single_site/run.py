"""Single-site BAPS as in the paper: ``baps-fed train`` and ``baps-fed evaluate``.

Orchestration only: data splits, the training loop (``train.py``), test evaluation against the
zero-shot FM, and the run folder (config, metrics, checkpoints, report.md, plots).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from baps_fed.data.prompts import PromptConfig
from baps_fed.data.sample import SegmentationDataset
from baps_fed.data.splits import split_dataset
from baps_fed.evaluation.evaluate import evaluate_fm, sample_prompts
from baps_fed.evaluation.run_files import plot_dice, plot_examples, write_history, write_json
from baps_fed.fm.contract import BlackboxFM
from baps_fed.fm.errors import QueryBudgetExceeded
from baps_fed.method.ip_decoder import IPDecoder
from baps_fed.method.spsa_step import prompt_fn
from baps_fed.single_site.training import TrainConfig, TrainResult, train_site


def compare_on_test(
    decoder: IPDecoder,
    theta: np.ndarray,
    fm: BlackboxFM,
    test: SegmentationDataset,
    seed: int,
    prompting: PromptConfig,
) -> dict:
    zero = evaluate_fm(fm, test, seed, prompting)
    tuned = evaluate_fm(fm, test, seed, prompting, prompt=prompt_fn(decoder, theta))
    return {
        "zero_shot": zero.summary(),
        "prompted": tuned.summary(),
        "gain_dice": float(tuned.dice.mean() - zero.dice.mean()),
    }


def example_grid(
    path: Path,
    decoder: IPDecoder,
    theta: np.ndarray,
    fm: BlackboxFM,
    test: SegmentationDataset,
    seed: int,
    prompting: PromptConfig,
    n: int = 6,
) -> Path:
    samples = list(test)[:n]
    images = np.stack([s.image for s in samples])
    prompts = sample_prompts(samples, seed, prompting)
    prompted, sent = prompt_fn(decoder, theta)(images, prompts)
    prompt = np.abs(prompted.astype(np.float32) - images).mean(-1)
    return plot_examples(
        path,
        {
            "image": images,
            "ground truth": np.stack([s.mask for s in samples]).astype(float),
            "zero-shot": (fm.segment(images, **prompts.query()) > 0).astype(float),
            "prompted image": prompted,
            "prompted FM": (fm.segment(prompted, **sent.query()) > 0).astype(float),
            "|prompt|": prompt / max(prompt.max(), 1e-6),
        },
        prompts,
    )


# files only a train run writes: their presence means the folder holds a run
RUN_MARKERS = ("checkpoints/last.pt", "checkpoints/best.pt", "metrics.json")


def run_training(
    decoder: IPDecoder,
    fm: BlackboxFM,
    data: SegmentationDataset,
    cfg: TrainConfig,
    run_dir: Path,
    resume: bool = False,
    progress: bool = True,
) -> tuple[TrainResult, dict]:
    """Train on the train split, pick the best weights on val, compare on test; write the run.

    An FM query budget bounds training and validation; the final test comparison is an
    evaluation the user asked for and is counted apart (``fm_images_test``).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    splits = split_dataset(data)
    result = train_site(decoder, fm, splits["train"], splits["val"], cfg, run_dir, resume, progress)
    write_json(
        run_dir / "config.json",
        {
            "train": asdict(result.config),
            "decoder": asdict(decoder.cfg),
            "encoder": decoder.encoder_id,
            "fm": fm.name,
            "data": data.name,
            "split_sizes": {k: len(v) for k, v in splits.items()},
            "trainable_parameters": decoder.num_params,
            "data_problems": [asdict(p) for p in data.problems],
        },
    )
    budget, fm.budget_images = fm.budget_images, None
    before, stopped, test = fm.meter.images, result.stopped, None
    try:
        seed, prompting = result.config.seed, result.config.step.prompt
        test = compare_on_test(decoder, result.theta, fm, splits["test"], seed, prompting)
        example_grid(
            run_dir / "examples.png", decoder, result.theta, fm, splits["test"], seed, prompting
        )
    except QueryBudgetExceeded as err:  # a remote quota: the trained decoder is kept all the same
        stopped += f"; the test comparison was not finished: {err}"
    finally:
        fm.budget_images = budget
    summary = {
        "prompt": result.config.step.prompt.describe(),
        "stopped": stopped,
        "best_val_dice": result.best_val_dice,
        "zero_shot_val_dice": result.zero_shot_val_dice,
        "fm_images_train": result.fm_images_train,
        "fm_images_val": result.fm_images_val,
        "fm_images_test": fm.meter.images - before,
        "fm": fm.usage(),
        "test": test,
    }
    write_history(run_dir, result.history)
    write_json(run_dir / "metrics.json", summary)
    plot_dice(run_dir, result.history, result.zero_shot_val_dice)
    write_report(run_dir, summary, decoder, fm, data)
    return result, summary


def write_report(
    run_dir: Path, summary: dict, decoder: IPDecoder, fm: BlackboxFM, data: SegmentationDataset
) -> None:
    t = summary["test"]
    table = ["The test comparison was not finished (see Stopped).", ""]
    if t is not None:
        z, p = t["zero_shot"], t["prompted"]
        table = [
            "| test split | n | Dice | IoU | HD95 px |",
            "|---|---|---|---|---|",
            f"| zero-shot | {z['n']} | {z['dice']:.3f} | {z['iou']:.3f} | {z['hd95']:.1f} |",
            f"| prompted (best on val) | {p['n']} | {p['dice']:.3f} | {p['iou']:.3f} | "
            f"{p['hd95']:.1f} |",
            "",
            f"Dice gain: {t['gain_dice']:+.3f}.",
        ]
    lines = [
        f"# BAPS single-site run: {data.name}",
        "",
        f"FM `{fm.name}`, decoder preset `{decoder.cfg.preset}` ({decoder.num_params} trainable "
        f"parameters), image encoder `{decoder.encoder_id}`, prompt: {summary['prompt']}. "
        f"Stopped: {summary['stopped']}.",
        f"FM image-queries: {summary['fm_images_train']} training, {summary['fm_images_val']} "
        f"validation. {cache_line(summary['fm'])}",
        "",
        *table,
        "Files: `config.json`, `metrics.csv`, `metrics.json`, `checkpoints/best.pt`, "
        "`checkpoints/last.pt`.",
        "",
        "![Dice over queries](dice_over_queries.png)",
        "",
        "![Examples](examples.png)",
    ]
    if data.problems:
        lines += [
            "",
            f"{len(data.problems)} input files were skipped or repaired: see "
            "`config.json` (data_problems).",
        ]
    (run_dir / "report.md").write_text("\n".join(lines) + "\n")


def cache_line(usage: dict) -> str:
    """How many queries the FM answered from its embedding cache, and its memory."""
    hits, misses = int(usage.get("cache_hits", 0)), int(usage.get("cache_misses", 0))
    if not hits + misses:
        return "No embedding cache (or a remote FM)."
    return (
        f"Embedding cache: {hits} of {hits + misses} images answered without encoding, peak "
        f"{usage.get('cache_peak_bytes', 0) / 2**20:.0f} MiB of "
        f"{usage.get('cache_max_bytes', 0) / 2**20:.0f} MiB."
    )


def run_evaluation(
    decoder: IPDecoder,
    fm: BlackboxFM,
    data: SegmentationDataset,
    seed: int,
    prompting: PromptConfig,
    split: str = "test",
) -> dict:
    ds = split_dataset(data)[split] if split != "all" else data
    return compare_on_test(decoder, decoder.get_theta(), fm, ds, seed, prompting) | {
        "split": split,
        "data": data.name,
    }


def print_comparison(result: dict) -> None:
    z, p = result["zero_shot"], result["prompted"]
    print(f"{'':<12} {'n':>5} {'Dice':>7} {'IoU':>7} {'HD95':>7}")
    for name, r in (("zero-shot", z), ("prompted", p)):
        print(f"{name:<12} {r['n']:>5} {r['dice']:7.3f} {r['iou']:7.3f} {r['hd95']:7.1f}")
    print(f"Dice gain {result['gain_dice']:+.3f}")
