"""White-box headroom of each modality: how far can an input-independent visual prompt go?

    python simulations/oracle_headroom.py --steps 150

Only possible because the embedded FM is ours: a VP prompt (added in SAM-normalised space, as
BAPS applies it) is trained by back-propagating through the FM (``baps_fed.method.oracle``), and
evaluated as the black box sees it (uint8). Sizes: one colour shift (3 parameters), a 3x4x4
grid (48) and a full-resolution prompt (3x128x128). A modality where even the full prompt gains
little is a shift prompting cannot fix; one where zero-shot is low and the oracle gains is what
the benchmark needs. Writes simulations/results/oracle_headroom.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from baps_fed.data.modalities import MODALITIES, synthetic_dataset
from baps_fed.evaluation.evaluate import evaluate_fm
from baps_fed.fm.sam_batched import BatchedSam
from baps_fed.fm.spec import load_fm
from baps_fed.fm.tiny import load_tiny_sam
from baps_fed.method.ip_decoder import DecoderConfig, build_decoder
from baps_fed.method.oracle import train_oracle
from baps_fed.method.spsa_step import prompt_fn

GRIDS = {"VP-3": 1, "VP-48": 4, "VP-full": 128}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modalities", nargs="+", default=list(MODALITIES))
    ap.add_argument("--n-train", type=int, default=256)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("simulations/results/oracle_headroom"))
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    sam, _ = load_tiny_sam()
    white_box = BatchedSam(sam)
    fm = load_fm("tiny")

    rows = []
    for modality in args.modalities:
        start = time.time()
        train = synthetic_dataset(modality, args.n_train, seed=args.seed + 1)
        test = synthetic_dataset(modality, args.n_test, seed=args.seed + 2)
        row = {
            "modality": modality,
            "zero_shot": float(evaluate_fm(fm, test, prompt_seed=args.seed).dice.mean()),
        }
        for name, grid in GRIDS.items():
            decoder = build_decoder(DecoderConfig(preset="vp", vp_grid=grid))
            theta = train_oracle(
                decoder,
                white_box,
                train,
                steps=args.steps,
                batch_size=args.batch,
                lr=args.lr,
                seed=args.seed,
            )
            scores = evaluate_fm(fm, test, prompt_seed=args.seed, prompt=prompt_fn(decoder, theta))
            row[name] = float(scores.dice.mean())
        row["seconds"] = round(time.time() - start)
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(
        json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2)
    )
    lines = [
        "# White-box oracle headroom (test Dice of the tiny FM, one positive point)",
        "",
        f"`python simulations/oracle_headroom.py --steps {args.steps}`",
        "",
        "| modality | zero-shot | " + " | ".join(GRIDS) + " |",
        "|---|---|" + "---|" * len(GRIDS),
    ]
    for r in rows:
        lines.append(
            f"| {r['modality']} | {r['zero_shot']:.3f} | "
            + " | ".join(f"{r[k]:.3f}" for k in GRIDS)
            + " |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
