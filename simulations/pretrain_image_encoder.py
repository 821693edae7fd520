"""Pretrain the IP decoder's frozen image encoder as an autoencoder on general-domain scenes.

    python simulations/pretrain_image_encoder.py --steps 1500

The encoder must summarise an image's appearance (colour, contrast, layout) so the IP decoder
can condition its prompt on it. An autoencoder that rebuilds a 32x32 thumbnail from the 64-d
pooled embedding learns exactly that, from the general corpus only (no medical data, nothing of
the FM). Records command, seed, steps and the final reconstruction error in the file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from baps_fed.data.general import make_general_scene
from baps_fed.method.image_encoder import SmallImageEncoder

CORPUS_SEED0 = 40_000_000  # disjoint from the FM's pretraining and evaluation scenes


class ThumbnailDecoder(nn.Module):
    """64-d embedding -> 3 x 32 x 32 thumbnail (normalised units); thrown away after training."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, 64 * 4 * 4)
        self.up = nn.Sequential(
            nn.ConvTranspose2d(64, 32, 2, 2),
            nn.GELU(),
            nn.ConvTranspose2d(32, 16, 2, 2),
            nn.GELU(),
            nn.ConvTranspose2d(16, 3, 2, 2),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.up(self.fc(z).view(-1, 64, 4, 4))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--corpus", type=int, default=4000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("baps_fed/method/weights/image_encoder.pt"))
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)

    images = np.stack([make_general_scene(CORPUS_SEED0 + i).image for i in range(args.corpus)])
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    enc, dec = SmallImageEncoder(args.dim), ThumbnailDecoder(args.dim)
    params = list(enc.parameters()) + list(dec.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    start = time.time()
    for step in range(args.steps):
        x = x_all[torch.from_numpy(rng.integers(len(x_all), size=args.batch))]
        if rng.random() < 0.5:
            x = x.flip(-1)
        target = F.adaptive_avg_pool2d((x - enc.mean) / enc.std, 32)
        loss = F.mse_loss(dec(enc(x)), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 200 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  mse {loss.item():.4f}  {time.time() - start:.0f}s", flush=True)
    meta = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "final_mse": round(loss.item(), 4),
        "steps": args.steps,
        "seed": args.seed,
        "date": dt.date.today().isoformat(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"dim": args.dim, "state_dict": enc.state_dict(), "meta": meta}, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB): {meta}")


if __name__ == "__main__":
    main()
