"""White-box headroom of each modality: how far can an input-independent visual prompt go?

    python simulations/oracle_headroom.py --fm-weights baps_fed/fm/weights/tiny_sam.pt

Only possible because the embedded FM is ours: an additive prompt (in SAM-normalised space, as
BAPS applies it) is trained by back-propagating through the FM. Three sizes: one colour shift
(3 parameters), a 3x4x4 grid (48) and a full-resolution image (3x128x128). A modality where
even the full prompt gains little is a shift prompting cannot fix; one where the oracle gains
and zero-shot is low is what the benchmark needs. Writes simulations/results/oracle_headroom.*.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from baps_fed.data.modalities import MODALITIES, synthetic_dataset
from baps_fed.evaluation import prompt_point
from baps_fed.fm.sam_batched import BatchedSam
from baps_fed.fm.tiny import load_tiny_sam
from baps_fed.metrics import dice_per_image

SHAPES = {"global-3": (3, 1, 1), "grid-48": (3, 4, 4), "full": (3, 128, 128)}


def _tensors(ds, seed: int):
    x = torch.from_numpy(np.stack([s.image for s in ds])).permute(0, 3, 1, 2).float()
    y = torch.from_numpy(np.stack([s.mask for s in ds])).float()
    p = torch.from_numpy(np.stack([prompt_point(s, seed) for s in ds])[:, None])
    return x, y, p


def _prompted(model: BatchedSam, x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    up = F.interpolate(prompt[None], x.shape[-2:], mode="bilinear", align_corners=False)
    return (x + up * model.sam.pixel_std).clamp(0, 255)


@torch.no_grad()
def _dice(model: BatchedSam, x, y, p, prompt) -> float:
    scores = []
    for i in range(0, len(x), 64):
        xi = _prompted(model, x[i : i + 64], prompt).round()  # the FM sees whole grey levels
        logits = model(xi, p[i : i + 64], torch.ones(len(xi), 1))
        scores.append(dice_per_image(logits.numpy() > 0, y[i : i + 64].numpy() > 0.5))
    return float(np.concatenate(scores).mean())


def train_prompt(model, x, y, p, shape, steps: int, lr: float, batch: int, seed: int):
    prompt = torch.zeros(shape, requires_grad=True)
    opt = torch.optim.Adam([prompt], lr=lr)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = torch.from_numpy(rng.integers(len(x), size=batch))
        logits = model(_prompted(model, x[idx], prompt), p[idx], torch.ones(batch, 1))
        prob = torch.sigmoid(logits)
        inter = (prob * y[idx]).sum((1, 2))
        loss = (1 - (2 * inter + 1) / (prob.sum((1, 2)) + y[idx].sum((1, 2)) + 1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return prompt.detach()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fm-weights", type=Path, default=None)
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
    torch.manual_seed(args.seed)
    sam, _ = load_tiny_sam(args.fm_weights)
    model = BatchedSam(sam).eval()
    for q in model.parameters():
        q.requires_grad_(False)

    rows = []
    for modality in args.modalities:
        start = time.time()
        train = synthetic_dataset(modality, args.n_train, seed=args.seed + 1)
        test = synthetic_dataset(modality, args.n_test, seed=args.seed + 2)
        xt, yt, pt = _tensors(train, args.seed)
        xe, ye, pe = _tensors(test, args.seed)
        row = {"modality": modality, "zero_shot": _dice(model, xe, ye, pe, torch.zeros(3, 1, 1))}
        for name, shape in SHAPES.items():
            prompt = train_prompt(
                model, xt, yt, pt, shape, args.steps, args.lr, args.batch, args.seed
            )
            row[name] = _dice(model, xe, ye, pe, prompt)
        row["seconds"] = round(time.time() - start)
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(
        json.dumps(
            {
                "args": vars(args) | {"fm_weights": str(args.fm_weights), "out": str(args.out)},
                "rows": rows,
            },
            indent=2,
        )
    )
    lines = [
        "| modality | zero-shot | " + " | ".join(SHAPES) + " |",
        "|---|---|" + "---|" * len(SHAPES),
    ]
    for r in rows:
        lines.append(
            f"| {r['modality']} | {r['zero_shot']:.3f} | "
            + " | ".join(f"{r[k]:.3f}" for k in SHAPES)
            + " |"
        )
    args.out.with_suffix(".md").write_text(
        "# White-box oracle headroom (test Dice)\n\n" + "\n".join(lines) + "\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
