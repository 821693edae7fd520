"""Zero-shot Dice of an FM (one positive point) on its own domain and on every modality/scanner.

    python simulations/eval_zero_shot.py --fm tiny --n 300 --scanners 0 1 2

This is the headroom check behind the benchmark: the embedded FM must be good on its own domain
(general scenes, held out from pretraining) and clearly worse on the medical-like modalities.
Writes simulations/results/zero_shot_<fm>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from baps_fed.data.general import general_dataset
from baps_fed.data.modalities import MODALITIES, synthetic_dataset
from baps_fed.data.prompts import PromptConfig
from baps_fed.evaluation.evaluate import evaluate_fm
from baps_fed.fm.spec import load_fm

GENERAL_EVAL_SEED0 = 20_000_000  # never used in pretraining (seeds 0..N) nor its hold-out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fm", default="tiny")
    ap.add_argument("--n", type=int, default=300, help="cases per modality and scanner")
    ap.add_argument("--n-general", type=int, default=500)
    ap.add_argument("--scanners", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--seed", type=int, default=0, help="data and point seed")
    ap.add_argument(
        "--point-modes",
        nargs="+",
        default=["uniform", "centroid"],
        help="uniform: BAPS's protocol; centroid: SAM's single-point evaluation",
    )
    ap.add_argument("--out", type=Path, default=Path("simulations/results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(2)

    fm = load_fm(args.fm)
    rows = []
    start = time.time()
    sources = [
        ("general (own domain)", "-", general_dataset(args.n_general, seed0=GENERAL_EVAL_SEED0))
    ]
    for modality in MODALITIES:
        for scanner in args.scanners:
            sources.append(
                (
                    modality,
                    scanner,
                    synthetic_dataset(modality, args.n, seed=args.seed, scanner=scanner),
                )
            )
    for data, scanner, ds in sources:
        row = {"data": data, "scanner": scanner, "n": len(ds)}
        for mode in args.point_modes:
            s = evaluate_fm(fm, ds, args.seed, PromptConfig(point_mode=mode)).summary()
            row[mode] = {k: s[k] for k in ("dice", "dice_std", "iou", "hd95")}
        rows.append(row)
        print(
            f"{data:<22} scanner {scanner}: "
            + ", ".join(f"{m} Dice {row[m]['dice']:.3f}" for m in args.point_modes),
            flush=True,
        )
    name = args.fm.replace(":", "_").replace("/", "_")
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "fm": args.fm,
        "n": args.n,
        "seed": args.seed,
        "seconds": round(time.time() - start),
        "fm_images": fm.meter.images,
    }
    (args.out / f"zero_shot_{name}.json").write_text(json.dumps({**meta, "rows": rows}, indent=2))
    lines = [
        f"# Zero-shot, one positive point, FM `{args.fm}`",
        "",
        f"`python simulations/eval_zero_shot.py --fm {args.fm} --n {args.n} --scanners "
        f"{' '.join(map(str, args.scanners))}`; {args.n} cases per row "
        f"({args.n_general} for general), points seeded by (seed {args.seed}, case name); "
        "uniform: a foreground pixel drawn uniformly (BAPS); centroid: the mask centroid, moved "
        "into the mask if outside (close to SAM's single-point protocol).",
        "",
        "| data | scanner | n | "
        + " | ".join(f"Dice ({m} point) | HD95 px ({m})" for m in args.point_modes)
        + " |",
        "|---|---|---|" + "---|---|" * len(args.point_modes),
    ]
    for r in rows:
        cells = " | ".join(
            f"{r[m]['dice']:.3f} ± {r[m]['dice_std']:.3f} | {r[m]['hd95']:.1f}"
            for m in args.point_modes
        )
        lines.append(f"| {r['data']} | {r['scanner']} | {r['n']} | {cells} |")
    (args.out / f"zero_shot_{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
