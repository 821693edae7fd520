"""Where a training step's time goes, measured side by side in one run.

    python simulations/bench_step_efficiency.py --steps 20

(a) overhead: wall time of whole SPSA steps divided by the wall time of the same FM queries
    replayed alone (goal <= 1.10: the decoder, prompting and update cost almost nothing);
(b) batching: the same step's 2K x B prompted images sent as ONE FM call against the published
    protocol of one FM call per image and perturbation (goal >= 3x).
Steps and replays are interleaved so machine noise hits both alike. Writes
simulations/results/step_efficiency.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from baps_fed.data.modalities import synthetic_dataset
from baps_fed.fm.contract import BlackboxFM
from baps_fed.fm.spec import load_fm
from baps_fed.method.ip_decoder import DecoderConfig, build_decoder
from baps_fed.method.perturbations import SeedKey
from baps_fed.method.spsa import SpsaConfig, SpsaState
from baps_fed.method.spsa_step import StepConfig, calibrate_c, spsa_step


class RecordingFM(BlackboxFM):
    """Passes queries through and keeps them, so they can be replayed alone."""

    def __init__(self, inner: BlackboxFM) -> None:
        super().__init__()
        self.inner, self.name, self.calls = inner, inner.name, []

    def _segment(self, q):
        self.calls.append((q.images, q.points))
        return self.inner.segment(q.images, q.points, q.labels, q.boxes)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fm", default="tiny")
    ap.add_argument("--preset", default="basis")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--sp-avg", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("simulations/results/step_efficiency"))
    args = ap.parse_args(argv)
    torch.set_num_threads(2)

    fm = RecordingFM(load_fm(args.fm))
    decoder = build_decoder(DecoderConfig(preset=args.preset))
    ds = synthetic_dataset("colonoscopy", 64, seed=7)
    images, masks = np.stack([s.image for s in ds]), np.stack([s.mask for s in ds])
    spsa = SpsaConfig(sp_avg=args.sp_avg, c=calibrate_c(decoder, 3.0), update="sign", lr=0.02)
    cfg = StepConfig(batch_size=args.batch, spsa=spsa)
    key = SeedKey(0, 0, 0)
    theta, state = decoder.get_theta(), SpsaState()
    spsa_step(decoder, fm, images, masks, theta, state, cfg, key)  # warm-up
    step_s, alone_s, per_image_s = [], [], []
    for _ in range(args.steps):
        t = time.perf_counter()
        res = spsa_step(decoder, fm, images, masks, theta, state, cfg, key)
        step_s.append(time.perf_counter() - t)
        theta, state = res.theta, res.state
        q_images, q_points = fm.calls[-1]
        t = time.perf_counter()
        fm.inner.segment(q_images, q_points)
        alone_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(len(q_images)):  # the published protocol: one image, one perturbation
            fm.inner.segment(q_images[i : i + 1], q_points[i : i + 1])
        per_image_s.append(time.perf_counter() - t)
    result = {
        "fm": args.fm,
        "preset": args.preset,
        "trainable_parameters": decoder.num_params,
        "batch": args.batch,
        "sp_avg": args.sp_avg,
        "images_per_step": 2 * args.sp_avg * args.batch,
        "steps": args.steps,
        "step_seconds": float(np.sum(step_s)),
        "fm_alone_seconds": float(np.sum(alone_s)),
        "overhead_ratio": float(np.sum(step_s) / np.sum(alone_s)),
        "per_image_protocol_seconds": float(np.sum(per_image_s)),
        "batched_speedup_vs_per_image": float(np.sum(per_image_s) / np.sum(alone_s)),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    md = (
        f"# SPSA step efficiency ({args.fm}, {args.preset} decoder, batch {args.batch}, "
        f"K {args.sp_avg}: {result['images_per_step']} FM images a step, {args.steps} steps)\n\n"
        f"`python simulations/bench_step_efficiency.py --steps {args.steps}`\n\n"
        "| measure | value | goal |\n|---|---|---|\n"
        f"| step wall time / same FM queries alone | {result['overhead_ratio']:.3f} | <= 1.10 |\n"
        f"| one FM call per step vs one call per image and perturbation | "
        f"{result['batched_speedup_vs_per_image']:.2f}x faster | >= 3x |\n"
    )
    args.out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
