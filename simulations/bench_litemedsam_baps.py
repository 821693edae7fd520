"""BAPS against a real medical FM: LiteMedSAM with loose boxes, on real fundus photographs.

    python simulations/bench_litemedsam_baps.py --data ../shared/data/drishti-gs-512 \
        --steps 30 --batch 4 --sp-avg 2 --threads 2

Per arm (the same data, split, seeds and FM): zero-shot with loose boxes (a quick clinician's
box), the visual prompt (``adapt=prompt``), box refinement (``adapt=box``), both. Each arm is a
single-site run (``run_training``): SPSA-GC with best-on-validation weights, reported on the test
split, beside the zero-shot Dice with tight boxes (the MedSAM training protocol): the share of the
loose-to-tight gap an arm closes. Also the ratio of a run's training wall time to the FM's own
forward time inside it (the method's overhead), and with ``--oracle-steps N`` each arm's white-box
oracle: the same decoder trained by Adam through LiteMedSAM (its ceiling on these images).
``--arms-from JSON`` takes the black-box rows of an earlier run with the same data, split, seed
and boxes (an arm costs ~30 min here), so the oracle can be added without re-running them.
Writes simulations/results/litemedsam_baps.*
LiteMedSAM runs at about a second per 256 px image on 2 CPU cores: the budget is small, and said.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from baps_fed.data.boxes import BoxConfig
from baps_fed.data.prompts import PromptConfig
from baps_fed.data.sample import SegmentationDataset
from baps_fed.data.sources import open_source
from baps_fed.data.splits import split_dataset
from baps_fed.evaluation.evaluate import evaluate_fm
from baps_fed.fm.contract import BlackboxFM
from baps_fed.fm.spec import load_fm
from baps_fed.fm.torch_fm import TorchSamFM
from baps_fed.method.ip_decoder import DecoderConfig, build_decoder
from baps_fed.method.oracle import train_oracle
from baps_fed.method.spsa import SpsaConfig
from baps_fed.method.spsa_step import StepConfig, prompt_fn
from baps_fed.single_site.run import run_training
from baps_fed.single_site.training import TrainConfig

ARMS = ("prompt", "box", "both")
REFINERS = {"image": "linear in image features", "bias": "by one bias per side"}
TIGHT = PromptConfig(kind="box", box=BoxConfig(protocol="tight"))
# what an earlier run (--arms-from) must share with this one for its rows to stand beside ours
SAME_SETUP = (
    *("data", "layout", "fm", "size", "seed", "box_margin", "box_jitter", "box_refiner"),
    *("steps", "val_every", "batch", "sp_avg", "lr"),
)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/drishti-gs-512")
    ap.add_argument("--layout", default="generic")
    ap.add_argument("--n", type=int, default=100, help="cases of a synthetic --data modality")
    ap.add_argument("--fm", default="litemedsam")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=256, help="letterbox size (LiteMedSAM's input)")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    ap.add_argument(
        "--box-refiner",
        default=DecoderConfig.box_refiner,
        choices=("image", "bias"),
        help="the refiner's moves: linear in image features, or one bias per side",
    )
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--val-every", type=int, default=10)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--sp-avg", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    # the site's habit: how far out its clinicians draw (fractions of the box's size per side)
    ap.add_argument("--box-margin", type=float, default=BoxConfig.loose_margin)
    ap.add_argument("--box-jitter", type=float, default=BoxConfig.loose_jitter)
    ap.add_argument("--oracle-steps", type=int, default=0, help="0: no white-box oracle")
    ap.add_argument("--oracle-lr", type=float, default=0.02)
    ap.add_argument("--arms-from", type=Path, help="black-box rows of an earlier run (JSON)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=Path, default=Path("runs/bench_litemedsam_baps"))
    ap.add_argument("--out", type=Path, default=Path("simulations/results/litemedsam_baps"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    habit = BoxConfig(loose_margin=args.box_margin, loose_jitter=args.box_jitter)
    loose = PromptConfig(kind="box", box=habit)

    data = open_source(args.data, n=args.n, seed=args.seed, layout=args.layout, size=args.size)
    image_size = data[0].image.shape[0]  # letterboxed real images, or 128 px synthetic ones
    splits = split_dataset(data)
    fm = load_fm(args.fm, device=args.device)
    zero = {
        name: evaluate_fm(fm, splits["test"], args.seed, prompting).summary()
        for name, prompting in (("loose", loose), ("tight", TIGHT))
    }
    print(
        f"zero-shot test Dice: loose {zero['loose']['dice']:.4f}, tight {zero['tight']['dice']:.4f}"
    )
    earlier = earlier_rows(args)
    rows = []
    for arm in args.arms:
        dec_cfg = DecoderConfig(image_size=image_size, adapt=arm, box_refiner=args.box_refiner)  # type: ignore[arg-type]
        if arm in earlier:
            rows.append(earlier[arm] | oracle_row(args, dec_cfg, fm, splits, loose, zero))
            print(json.dumps(rows[-1]), flush=True)
            continue
        decoder = build_decoder(dec_cfg)
        step = StepConfig(
            batch_size=args.batch,
            spsa=SpsaConfig(sp_avg=args.sp_avg, lr=args.lr, update="sign", schedule="constant"),
            prompt=loose,
        )
        cfg = TrainConfig(steps=args.steps, val_every=args.val_every, seed=args.seed, step=step)
        fm_seconds, start = fm.meter.seconds, time.perf_counter()
        result, summary = run_training(
            decoder, fm, data, replace(cfg), args.runs / arm, progress=False
        )
        wall = time.perf_counter() - start
        tuned = summary["test"]["prompted"]["dice"]
        rows.append(
            {
                "arm": arm,
                "parameters": decoder.num_params,
                "test_dice": tuned,
                "zero_shot_loose": summary["test"]["zero_shot"]["dice"],
                "gain": summary["test"]["gain_dice"],
                "gap_closed": gap_share(tuned, zero),
                "best_val_dice": result.best_val_dice,
                "zero_shot_val_dice": result.zero_shot_val_dice,
                "fm_images_train": result.fm_images_train,
                "fm_images_val": result.fm_images_val,
                "wall_s": wall,
                "fm_s": fm.meter.seconds - fm_seconds,
                "wall_over_fm": wall / max(fm.meter.seconds - fm_seconds, 1e-9),
                "stopped": result.stopped,
            }
            | oracle_row(args, dec_cfg, fm, splits, loose, zero)
        )
        print(json.dumps(rows[-1]), flush=True)
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "zero_shot": zero, "arms": rows}
    report["split_sizes"] = {k: len(v) for k, v in splits.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


def earlier_rows(args: argparse.Namespace) -> dict[str, dict]:
    """The black-box rows of ``--arms-from``, by arm; refused if that run's setup differs."""
    if args.arms_from is None:
        return {}
    report = json.loads(args.arms_from.read_text())
    ours = {k: str(v) for k, v in vars(args).items()}
    differ = [k for k in SAME_SETUP if report["args"].get(k) != ours[k]]
    if differ:
        raise SystemExit(
            f"{args.arms_from}: its run differs in {differ}; its rows cannot stand beside this "
            "run's: give the same values, or drop --arms-from"
        )
    oracle_keys = ("oracle_dice", "oracle_gap_closed", "oracle_steps", "oracle_s")
    return {r["arm"]: {k: v for k, v in r.items() if k not in oracle_keys} for r in report["arms"]}


def gap_share(dice: float, zero: dict) -> float | None:
    """The share of the zero-shot loose-to-tight gap a Dice closes (None: no gap to close)."""
    gap = zero["tight"]["dice"] - zero["loose"]["dice"]
    return (dice - zero["loose"]["dice"]) / gap if gap > 0 else None


def oracle_row(
    args: argparse.Namespace,
    dec_cfg: DecoderConfig,
    fm: BlackboxFM,
    splits: dict[str, SegmentationDataset],
    loose: PromptConfig,
    zero: dict,
) -> dict:
    """Test Dice of the arm's decoder trained white-box through the FM (last weights: no
    validation choice, so a ceiling, not a method); empty without --oracle-steps."""
    if args.oracle_steps <= 0:
        return {}
    if not isinstance(fm, TorchSamFM):
        raise SystemExit(f"--oracle-steps needs a local torch FM, not {args.fm!r}")
    decoder = build_decoder(dec_cfg)
    start = time.perf_counter()
    theta = train_oracle(
        decoder,
        fm.model,
        splits["train"],
        steps=args.oracle_steps,
        batch_size=args.batch,
        lr=args.oracle_lr,
        seed=args.seed,
        prompt=loose,
    )
    seconds = time.perf_counter() - start
    test = evaluate_fm(fm, splits["test"], args.seed, loose, prompt=prompt_fn(decoder, theta))
    dice = float(test.dice.mean())
    return {
        "oracle_dice": dice,
        "oracle_gap_closed": gap_share(dice, zero),
        "oracle_steps": args.oracle_steps,
        "oracle_s": seconds,
    }


def markdown(report: dict) -> str:
    a, z = report["args"], report["zero_shot"]
    lines = [
        "# BAPS on LiteMedSAM with loose boxes (real fundus photographs)",
        "",
        f"Data `{a['data']}` letterboxed to {a['size']} px, split {report['split_sizes']}; "
        f"FM `{a['fm']}`; SPSA-GC sign updates, lr {a['lr']}, {a['steps']} steps of batch "
        f"{a['batch']} x 2K = {2 * int(a['sp_avg'])} perturbed copies, validation every "
        f"{a['val_every']} steps; seed {a['seed']}, {a['threads']} torch threads; box refiner "
        f"moves {REFINERS[a.get('box_refiner', 'image')]}.",
        "",
        f"The site's boxes: each side out by {a['box_margin']} +- {a['box_jitter']} of the "
        "box's size (loose).",
        "",
        f"Zero-shot test Dice: loose boxes {z['loose']['dice']:.4f}, tight boxes "
        f"{z['tight']['dice']:.4f} (the gap an adapter can close: "
        f"{z['tight']['dice'] - z['loose']['dice']:+.4f}).",
        "",
        "| arm | params | test Dice | gain vs zero-shot | share of loose-to-tight gap | "
        "FM images (train / val) | wall / FM time | white-box oracle (share of gap) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["arms"]:
        oracle = "not run"
        if "oracle_dice" in r:
            oracle = f"{r['oracle_dice']:.4f} ({_share(r['oracle_gap_closed'])})"
        lines.append(
            f"| {r['arm']} | {r['parameters']} | {r['test_dice']:.4f} | {r['gain']:+.4f} | "
            f"{_share(r['gap_closed'])} | {r['fm_images_train']} / {r['fm_images_val']} | "
            f"{r['wall_over_fm']:.2f} | {oracle} |"
        )
    if any("oracle_dice" in r for r in report["arms"]):
        lines += [
            "",
            f"Oracle: the arm's decoder trained by Adam (lr {a['oracle_lr']}) on soft Dice "
            f"through the FM for {a['oracle_steps']} steps of batch {a['batch']}, last weights "
            "(no validation choice): the ceiling of that decoder here, not a black-box method.",
        ]
    lines += [
        "",
        "Command:",
        "",
        "    python simulations/bench_litemedsam_baps.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in a.items() if k != "arms" and v != "None"
        )
        + " --arms "
        + a["arms"].strip("[]").replace("'", "").replace(",", ""),
        "",
    ]
    return "\n".join(lines)


def _share(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


if __name__ == "__main__":
    main()
