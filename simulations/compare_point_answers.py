"""Are two tiny FMs' point answers bit-identical? (A box stage must leave them so.)

    git show 7e7d0ff:baps_fed/fm/weights/tiny_sam.pt > /tmp/old.pt
    python simulations/compare_point_answers.py /tmp/old.pt baps_fed/fm/weights/tiny_sam.pt

Lists the tensors that differ, then compares logits (``torch.equal``) for 1 and 3 points (first
positive, the rest random labels) on held-out general scenes and every synthetic modality; box
answers are shown for contrast. Exits 1 if any point answer differs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from baps_fed.data.general import general_dataset
from baps_fed.data.modalities import MODALITIES, synthetic_dataset
from baps_fed.fm.sam_batched import BatchedSam
from baps_fed.fm.tiny import load_tiny_sam


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--n", type=int, default=16, help="images per modality (2n general)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    old, new = load_tiny_sam(args.old)[0], load_tiny_sam(args.new)[0]
    so, sn = old.state_dict(), new.state_dict()
    print("tensors that differ:", [k for k in so if not torch.equal(so[k], sn[k])])
    mo, mn = BatchedSam(old).eval(), BatchedSam(new).eval()
    rng = np.random.default_rng(0)
    sets = {"general": general_dataset(2 * args.n, seed0=40_000_000)}
    sets.update({m: synthetic_dataset(m, args.n, seed=9) for m in MODALITIES})
    queries, same = 0, True
    with torch.inference_mode():
        for name, ds in sets.items():
            x = torch.from_numpy(np.stack([s.image for s in ds])).permute(0, 3, 1, 2).float()
            b = x.shape[0]
            for k in (1, 3):
                p = torch.from_numpy(rng.uniform(0, x.shape[-1], (b, k, 2)).astype(np.float32))
                lab = torch.from_numpy(rng.integers(0, 2, (b, k)))
                lab[:, 0] = 1
                eq = torch.equal(mo(x, p, lab), mn(x, p, lab))
                same &= eq
                queries += b
                print(f"{name:<12} {k} point(s): {'bit-identical' if eq else 'DIFFERENT'}")
            bx = torch.tensor([[10.0, 12.0, 100.0, 90.0]] * b)
            diff = (mo(x, boxes=bx) - mn(x, boxes=bx)).abs().max().item()
            print(f"{name:<12} box: max |logit difference| {diff:.2f}")
    print(f"point queries compared: {queries}; all bit-identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
