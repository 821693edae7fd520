"""Single-site benchmark: zero-shot, VP, BAPS and the white-box oracle on every modality.

    python simulations/bench_single_site.py --seeds 0 1 2 --budget 20000

Per modality (embedded FM, synthetic data, seed-0 dataset split 70/10/20 by name hash), with one
positive point (the default) or one box (``--prompt box --box-protocol tight|loose``), the same
prompt for every method:
- zero-shot: the FM with that prompt alone;
- VP-3 and VP-48: one input-independent prompt (a colour shift; a 3x4x4 grid), SPSA;
- BAPS: the IP decoder (``basis`` preset, image- and point-conditioned), SPSA;
- oracle: the BAPS decoder trained white-box through the FM (the ceiling of that prompt).
SPSA runs stop at ``--budget`` training FM image-queries (validation queries are counted apart)
and are reported on the test split with the best-on-validation weights, mean and std over seeds.
Writes simulations/results/single_site.{json,md}; each run's folder under --runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from baps_fed.data.boxes import BOX_PROTOCOLS, BoxConfig
from baps_fed.data.modalities import MODALITIES, synthetic_dataset
from baps_fed.data.prompts import PROMPT_KINDS, PromptConfig
from baps_fed.data.splits import split_dataset
from baps_fed.evaluation.evaluate import evaluate_fm
from baps_fed.fm.sam_batched import BatchedSam
from baps_fed.fm.spec import load_fm
from baps_fed.fm.tiny import load_tiny_sam
from baps_fed.method.ip_decoder import DecoderConfig, build_decoder
from baps_fed.method.oracle import train_oracle
from baps_fed.method.spsa import SpsaConfig
from baps_fed.method.spsa_step import StepConfig, prompt_fn
from baps_fed.single_site.training import TrainConfig, train_site

METHODS = {
    "VP-3": DecoderConfig(preset="vp", vp_grid=1),
    "VP-48": DecoderConfig(preset="vp", vp_grid=4),
    "BAPS": DecoderConfig(preset="basis"),
    # finer spatial bases, fewer image features (66 and 108 parameters): what ultrasound asks of
    # the trade-off between spatial detail and conditioning at SPSA's affordable sizes
    "BAPS-g3r1": DecoderConfig(preset="basis", cosine_grid=3, feature_rank=1),
    "BAPS-g4r1": DecoderConfig(preset="basis", cosine_grid=4, feature_rank=1),
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modalities", nargs="+", default=list(MODALITIES))
    ap.add_argument(
        "--methods", nargs="*", default=["VP-3", "VP-48", "BAPS"], choices=list(METHODS)
    )
    ap.add_argument(
        "--oracle-decoder",
        default="BAPS",
        choices=[m for m in METHODS if m.startswith("BAPS")],
        help="whose decoder the white-box oracle trains (its ceiling)",
    )
    ap.add_argument("--prompt", default="point", choices=PROMPT_KINDS)
    ap.add_argument("--box-protocol", default="loose", choices=BOX_PROTOCOLS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n", type=int, default=600, help="cases per modality (all splits)")
    ap.add_argument("--budget", type=int, default=20000, help="training FM image-queries")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--sp-avg", type=int, default=5)
    ap.add_argument("--lr", type=float, default=0.02, help="sign-update step size")
    ap.add_argument("--val-every", type=int, default=50)
    ap.add_argument("--oracle-steps", type=int, default=300)
    ap.add_argument(
        "--oracle-from",
        type=Path,
        help="take each modality's oracle (and the methods not run now) from this earlier "
        "results JSON (same --n and seeds) instead of training them again: for reruns of SPSA "
        "methods at another budget or with other decoders",
    )
    ap.add_argument(
        "--threads", type=int, default=2, help="torch threads (1 when two benchmarks share 2 cores)"
    )
    ap.add_argument("--runs", type=Path, default=Path("runs/bench_single_site"))
    ap.add_argument("--out", type=Path, default=Path("simulations/results/single_site"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.prompting = PromptConfig(kind=args.prompt, box=BoxConfig(protocol=args.box_protocol))
    steps = args.budget // (2 * args.sp_avg * args.batch)
    sam, _ = load_tiny_sam()
    white_box = BatchedSam(sam)

    rows = []
    for modality in args.modalities:
        splits = split_dataset(synthetic_dataset(modality, args.n, seed=0))
        fm = load_fm("tiny")
        zero = float(evaluate_fm(fm, splits["test"], 0, args.prompting).dice.mean())
        row: dict = {"modality": modality, "zero_shot": zero, "n_test": len(splits["test"])}
        for method in args.methods:
            scores, queries = [], []
            for seed in args.seeds:
                start = time.time()
                decoder = build_decoder(METHODS[method])
                cfg = TrainConfig(
                    steps=steps,
                    val_every=args.val_every,
                    seed=seed,
                    step=StepConfig(
                        batch_size=args.batch,
                        prompt=args.prompting,
                        spsa=SpsaConfig(
                            sp_avg=args.sp_avg, update="sign", lr=args.lr, schedule="constant"
                        ),
                    ),
                )
                fm = load_fm("tiny")
                res = train_site(
                    decoder,
                    fm,
                    splits["train"],
                    splits["val"],
                    cfg,
                    args.runs / modality / method / f"seed{seed}",
                    progress=False,
                )
                test = evaluate_fm(
                    fm, splits["test"], 0, args.prompting, prompt=prompt_fn(decoder, res.theta)
                )
                scores.append(float(test.dice.mean()))
                queries.append(res.fm_images_train)
                print(
                    f"{modality} {method} seed {seed}: test Dice {scores[-1]:.3f} "
                    f"({res.fm_images_train} queries, {time.time() - start:.0f}s)",
                    flush=True,
                )
            row[method] = {
                "mean": float(np.mean(scores)),
                "std": float(np.std(scores)),
                "runs": scores,
                "fm_images": queries,
            }
        if args.oracle_from:  # the oracle, and the methods not run now, as they were
            earlier = json.loads(args.oracle_from.read_text())["rows"]
            old_row = next(r for r in earlier if r["modality"] == modality)
            row |= {k: v for k, v in old_row.items() if isinstance(v, dict) and k not in row}
        else:
            row["oracle"] = oracle_ceiling(args, splits, white_box)
        print(json.dumps(row), flush=True)
        rows.append(row)
        table = write_results(args, steps, rows)
    print(table)


def oracle_ceiling(args: argparse.Namespace, splits: dict, white_box: BatchedSam) -> dict:
    """Test Dice of the --oracle-decoder trained white-box through the FM, over the seeds."""
    oracle_scores = []
    for seed in args.seeds:
        decoder = build_decoder(METHODS[args.oracle_decoder])
        theta = train_oracle(
            decoder,
            white_box,
            splits["train"],
            steps=args.oracle_steps,
            batch_size=args.batch,
            seed=seed,
            prompt=args.prompting,
        )
        test = evaluate_fm(
            load_fm("tiny"), splits["test"], 0, args.prompting, prompt=prompt_fn(decoder, theta)
        )
        oracle_scores.append(float(test.dice.mean()))
    return {
        "mean": float(np.mean(oracle_scores)),
        "std": float(np.std(oracle_scores)),
        "runs": oracle_scores,
        "decoder": args.oracle_decoder,
    }


def write_results(args: argparse.Namespace, steps: int, rows: list[dict]) -> str:
    """JSON and markdown of the rows so far (rewritten after each modality: a long run that is
    stopped keeps what it finished)."""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(
        json.dumps(
            {"args": {k: str(v) for k, v in vars(args).items()}, "steps": steps, "rows": rows},
            indent=2,
        )
        + "\n"
    )
    methods = list(dict.fromkeys(m for r in rows for m in METHODS if m in r)) + ["oracle"]
    baps = [m for m in methods if m.startswith("BAPS")]
    has_vp = any(m.startswith("VP") for m in methods)  # no VP run: no "- best VP" column
    lines = [
        "# Single-site benchmark (test Dice, mean ± std over seeds "
        f"{' '.join(map(str, args.seeds))}; {args.budget} training FM image-queries per run; "
        f"{args.prompting.describe()} per image)",
        "",
        "`python " + " ".join(sys.argv) + "`",
        "",
        "| modality | zero-shot | "
        + " | ".join(methods)
        + "".join(
            f" | {m} gain | {m} share of oracle gain" + (f" | {m} - best VP" if has_vp else "")
            for m in baps
        )
        + " |",
        "|---|---|"
        + "---|" * len(methods)
        + ("---|---|---|" if has_vp else "---|---|") * len(baps),
    ]
    for r in rows:
        cells = [f"{r[m]['mean']:.3f} ± {r[m]['std']:.3f}" if m in r else "-" for m in methods]
        oracle_gain = r["oracle"]["mean"] - r["zero_shot"]
        vps = [r[m]["mean"] for m in methods if m.startswith("VP") and m in r]
        for m in baps:
            gain = r[m]["mean"] - r["zero_shot"] if m in r else float("nan")
            share = gain / oracle_gain if oracle_gain > 0 else float("nan")
            over_vp = r[m]["mean"] - max(vps) if vps and m in r else float("nan")
            cells += [f"{gain:+.3f}", f"{share:.2f}"] + ([f"{over_vp:+.3f}"] if has_vp else [])
        lines.append(f"| {r['modality']} | {r['zero_shot']:.3f} | " + " | ".join(cells) + " |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
