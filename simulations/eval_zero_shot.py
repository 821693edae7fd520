"""Zero-shot Dice of an FM (one positive point, or one box) on its own domain and on every
modality/scanner.

    python simulations/eval_zero_shot.py --fm tiny --n 300 --scanners 0 1 2
    python simulations/eval_zero_shot.py --fm tiny --prompts point tight loose --point-modes uniform

This is the headroom check behind the benchmark: the embedded FM must be good on its own domain
(general scenes, held out from pretraining) and clearly worse on the medical-like modalities.
``--prompts``: ``point`` (each of ``--point-modes``), ``tight`` and ``loose`` boxes
(``baps_fed.data.boxes``); ``--baseline FM`` adds another FM's box columns (e.g. earlier weights).
Writes simulations/results/zero_shot_<fm>.{json,md} (or ``--name``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from baps_fed.data.boxes import BOX_PROTOCOLS, BoxConfig
from baps_fed.data.general import general_dataset
from baps_fed.data.modalities import MODALITIES, synthetic_dataset
from baps_fed.data.prompts import PromptConfig
from baps_fed.evaluation.evaluate import evaluate_fm
from baps_fed.fm.spec import load_fm

GENERAL_EVAL_SEED0 = 20_000_000  # never used in pretraining (seeds 0..N) nor its hold-out
POINT_MODE_NOTES = {
    "uniform": "uniform: a foreground pixel drawn uniformly (BAPS)",
    "centroid": "centroid: the mask centroid, moved into the mask if outside (close to SAM's "
    "single-point protocol)",
}


def prompt_columns(prompts: list[str], point_modes: list[str]) -> dict[str, PromptConfig]:
    """Column key -> prompt protocol: '<mode>' for each point mode, '<protocol> box' for boxes."""
    cols = {}
    for p in prompts:
        if p == "point":
            cols.update({m: PromptConfig(point_mode=m) for m in point_modes})
        else:
            cols[f"{p} box"] = PromptConfig(kind="box", box=BoxConfig(protocol=p))
    return cols


def header(key: str) -> str:
    if key.endswith(" box"):  # '<protocol> box' or 'baseline <protocol> box'
        return f"Dice ({key}) | HD95 px ({key.removesuffix(' box')})"
    return f"Dice ({key} point) | HD95 px ({key})"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fm", default="tiny")
    ap.add_argument("--n", type=int, default=300, help="cases per modality and scanner")
    ap.add_argument("--n-general", type=int, default=500)
    ap.add_argument("--scanners", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--seed", type=int, default=0, help="data and prompt seed")
    ap.add_argument(
        "--prompts",
        nargs="+",
        choices=["point", *BOX_PROTOCOLS],
        default=["point"],
        help="point (each --point-modes), tight box, loose box",
    )
    ap.add_argument(
        "--point-modes",
        nargs="+",
        default=["uniform", "centroid"],
        help="uniform: BAPS's protocol; centroid: SAM's single-point evaluation",
    )
    ap.add_argument(
        "--baseline", default=None, help="another FM whose box answers are added as columns"
    )
    ap.add_argument("--note", default="", help="a sentence added to the table's notes")
    ap.add_argument("--name", default=None, help="output file stem (default zero_shot_<fm>)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--out", type=Path, default=Path("simulations/results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    fms = {"": load_fm(args.fm)}
    columns = {"": prompt_columns(args.prompts, args.point_modes)}
    boxes = [p for p in args.prompts if p != "point"]
    if args.baseline is not None and boxes:
        fms["baseline "] = load_fm(args.baseline)
        columns["baseline "] = prompt_columns(boxes, [])
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
    keys = [prefix + key for prefix, cols in columns.items() for key in cols]
    for data, scanner, ds in sources:
        row = {"data": data, "scanner": scanner, "n": len(ds)}
        for prefix, cols in columns.items():
            for key, cfg in cols.items():
                s = evaluate_fm(fms[prefix], ds, args.seed, cfg).summary()
                row[prefix + key] = {k: s[k] for k in ("dice", "dice_std", "iou", "hd95")}
        rows.append(row)
        print(
            f"{data:<22} scanner {scanner}: "
            + ", ".join(f"{k} Dice {row[k]['dice']:.3f}" for k in keys),
            flush=True,
        )
    name = args.name or "zero_shot_" + args.fm.replace(":", "_").replace("/", "_")
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "fm": args.fm,
        "baseline": args.baseline if "baseline " in fms else None,
        "prompts": args.prompts,
        "n": args.n,
        "seed": args.seed,
        "seconds": round(time.time() - start),
        "fm_images": fms[""].meter.images,
    }
    (args.out / f"{name}.json").write_text(json.dumps({**meta, "rows": rows}, indent=2))
    what = " or ".join(
        ["one positive point" if p == "point" else f"one {p} box" for p in args.prompts]
    )
    command = (
        f"python simulations/eval_zero_shot.py --fm {args.fm} --n {args.n} --scanners "
        + " ".join(map(str, args.scanners))
    )
    if args.prompts != ["point"]:
        command += f" --prompts {' '.join(args.prompts)}"
    if args.point_modes != ["uniform", "centroid"]:
        command += f" --point-modes {' '.join(args.point_modes)}"
    if meta["baseline"]:
        command += f" --baseline {args.baseline}"
    if args.name:
        command += f" --name {args.name}"
    seeded = "points" if args.prompts == ["point"] else "prompts"
    notes = [
        f"`{command}`; {args.n} cases per row ({args.n_general} for general), {seeded} seeded by "
        f"(seed {args.seed}, case name)"
    ]
    if "point" in args.prompts:
        notes.append("; ".join(POINT_MODE_NOTES.get(m, m) for m in args.point_modes))
    if boxes:
        b = BoxConfig()
        notes.append(
            f"tight box: the mask's extent, each side moved out by 0..{b.tight_shift:g} of the "
            f"image's longest side (MedSAM's training protocol); loose box: each side moved out by "
            f"{b.loose_margin:g} ± {b.loose_jitter:g} of the box's size (a clinician's quick box)"
        )
    if meta["baseline"]:
        notes.append(f"baseline: `{args.baseline}`, box prompts only")
    if args.note:
        notes.append(args.note)
    lines = [
        f"# Zero-shot, {what}, FM `{args.fm}`",
        "",
        "; ".join(notes) + ".",
        "",
        "| data | scanner | n | " + " | ".join(header(k) for k in keys) + " |",
        "|---|---|---|" + "---|---|" * len(keys),
    ]
    for r in rows:
        cells = " | ".join(
            f"{r[k]['dice']:.3f} ± {r[k]['dice_std']:.3f} | {r[k]['hd95']:.1f}" for k in keys
        )
        lines.append(f"| {r['data']} | {r['scanner']} | {r['n']} | {cells} |")
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
