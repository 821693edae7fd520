"""Encode once: what the embedding cache saves on real-FM workloads, side by side in one run.

    python simulations/bench_encode_once.py --data ../shared/data/drishti-gs-512 \
        --steps 40 --batch 4 --threads 1

The same FM twice, with the cache off (``?cache_mb=0``) and on (the default bound), interleaved
step by step so machine noise hits both alike:
- **box-only SPSA** (``adapt=box``, the bias box refiner, loose boxes, batch B, one SPSA sample:
  2 x B images per step, the same B images with moved boxes): wall seconds per step, split into
  steps whose images were all seen before (the steady state from the second epoch on) and
  first-seen steps; both arms follow one trajectory, checked bit for bit;
- **repeated zero-shot** on the test split (what every validation pass, evaluate message and
  report does again): the second pass over the same images;
Writes simulations/results/encode_once.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from baps_fed.data.boxes import BoxConfig
from baps_fed.data.prompts import PromptConfig
from baps_fed.data.sources import open_source
from baps_fed.data.splits import split_dataset
from baps_fed.evaluation.evaluate import evaluate_fm
from baps_fed.fm.spec import load_fm
from baps_fed.method.ip_decoder import DecoderConfig, build_decoder
from baps_fed.method.perturbations import SeedKey
from baps_fed.method.spsa import SpsaConfig, SpsaState
from baps_fed.method.spsa_step import StepConfig, batch_rng, sample_batch, spsa_step

ARMS = ("uncached", "cached")


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/drishti-gs-512")
    ap.add_argument("--layout", default="generic")
    ap.add_argument("--n", type=int, default=100, help="cases of a synthetic --data modality")
    ap.add_argument("--fm", default="litemedsam", help="a local FM spec without options")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=256, help="letterbox size (the FM's input)")
    ap.add_argument("--steps", type=int, default=40, help="box-only SPSA steps per arm")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--sp-avg", type=int, default=1)
    ap.add_argument("--zero-shot-passes", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("simulations/results/encode_once"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    data = open_source(args.data, n=args.n, seed=args.seed, layout=args.layout, size=args.size)
    image_size = data[0].image.shape[0]  # letterboxed real images, or 128 px synthetic ones
    splits = split_dataset(data)
    fms = {
        "uncached": load_fm(f"{args.fm}?cache_mb=0", device=args.device),
        "cached": load_fm(args.fm, device=args.device),
    }
    loose = PromptConfig(kind="box", box=BoxConfig(protocol="loose"))
    result = {
        "command": "python simulations/bench_encode_once.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s)",
        "split_sizes": {k: len(v) for k, v in splits.items()},
        "spsa": spsa_workload(args, fms, splits["train"], loose, image_size),
        "zero_shot": zero_shot_workload(args, fms, splits["test"], loose),
        "cache": fms["cached"].cache_stats().as_dict(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def spsa_workload(args, fms, train, loose: PromptConfig, image_size: int) -> dict:
    decoder = build_decoder(DecoderConfig(image_size=image_size, adapt="box", box_refiner="bias"))
    cfg = StepConfig(
        batch_size=args.batch,
        prompt=loose,
        spsa=SpsaConfig(sp_avg=args.sp_avg, lr=0.02, update="sign", schedule="constant"),
    )
    images = np.stack([s.image for s in train])
    masks = np.stack([s.mask for s in train])
    key = SeedKey(args.seed, 0, 0)
    theta = {arm: decoder.get_theta() for arm in ARMS}
    state = {arm: SpsaState() for arm in ARMS}
    seconds: dict[str, list[float]] = {arm: [] for arm in ARMS}
    seen: set[int] = set()
    warm: list[bool] = []
    for step in range(args.steps):
        idx, _ = sample_batch(masks, cfg.batch_size, batch_rng(key, step), cfg.prompt)
        warm.append(set(idx.tolist()) <= seen)
        seen |= set(idx.tolist())
        for arm in ARMS:
            s, r = _timed(
                lambda arm=arm: spsa_step(
                    decoder, fms[arm], images, masks, theta[arm], state[arm], cfg, key
                )
            )
            seconds[arm].append(s)
            theta[arm], state[arm] = r.theta, r.state
        print(f"step {step}: " + ", ".join(f"{a} {seconds[a][-1]:.2f} s" for a in ARMS), flush=True)

    def med(arm: str, want: bool) -> float | None:
        xs = [s for s, w in zip(seconds[arm], warm, strict=True) if w == want]
        return statistics.median(xs) if xs else None

    out = {
        "steps": args.steps,
        "batch": args.batch,
        "sp_avg": args.sp_avg,
        "images_per_step": 2 * args.sp_avg * args.batch,
        "train_images": len(train),
        "warm_steps": sum(warm),
        "seconds": seconds,
        "warm": warm,
        "median_step_s": {a: {"seen": med(a, True), "first_seen": med(a, False)} for a in ARMS},
        "total_s": {a: sum(seconds[a]) for a in ARMS},
        "same_trajectory": bool(np.array_equal(theta["uncached"], theta["cached"])),
        "final_theta": theta["cached"].tolist(),
    }
    m = out["median_step_s"]
    out["speedup_seen"] = (
        m["uncached"]["seen"] / m["cached"]["seen"] if m["cached"]["seen"] else None
    )
    out["speedup_first_seen"] = (
        m["uncached"]["first_seen"] / m["cached"]["first_seen"]
        if m["cached"]["first_seen"]
        else None
    )
    out["speedup_total"] = out["total_s"]["uncached"] / out["total_s"]["cached"]
    return out


def zero_shot_workload(args, fms, test, loose: PromptConfig) -> dict:
    seconds: dict[str, list[float]] = {arm: [] for arm in ARMS}
    dice: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for _ in range(args.zero_shot_passes):
        for arm in ARMS:
            s, scores = _timed(lambda arm=arm: evaluate_fm(fms[arm], test, args.seed, loose))
            seconds[arm].append(s)
            dice[arm].append(float(scores.dice.mean()))
    repeat = (
        {a: statistics.median(seconds[a][1:]) for a in ARMS} if len(seconds["cached"]) > 1 else None
    )
    return {
        "images": len(test),
        "passes": args.zero_shot_passes,
        "seconds": seconds,
        "dice": dice,
        "same_dice": dice["uncached"] == dice["cached"],
        "speedup_repeat": repeat["uncached"] / repeat["cached"] if repeat else None,
    }


def markdown(r: dict) -> str:
    s, z = r["spsa"], r["zero_shot"]
    m = s["median_step_s"]

    def f(x: float | None, spec: str = ".2f") -> str:
        return "n/a" if x is None else format(x, spec)

    c = r["cache"]
    return (
        "# Encode once: the embedding cache on real-FM workloads\n\n"
        f"`{r['command']}`\n\n"
        f"Machine: {r['machine']}; splits {r['split_sizes']}. "
        "Both arms interleaved step by step.\n\n"
        f"## Box-only SPSA (batch {s['batch']}, {s['sp_avg']} SPSA sample(s): "
        f"{s['images_per_step']} FM images per step, {s['steps']} steps over "
        f"{s['train_images']} training images)\n\n"
        "| steps | uncached s/step | cached s/step | speed-up |\n|---|---|---|---|\n"
        f"| images seen before ({s['warm_steps']} steps) | {f(m['uncached']['seen'])} | "
        f"{f(m['cached']['seen'])} | **{f(s['speedup_seen'])}x** |\n"
        f"| first seen ({s['steps'] - s['warm_steps']} steps) | {f(m['uncached']['first_seen'])} | "
        f"{f(m['cached']['first_seen'])} | {f(s['speedup_first_seen'])}x |\n"
        f"| whole run (total s) | {s['total_s']['uncached']:.1f} | {s['total_s']['cached']:.1f} | "
        f"{s['speedup_total']:.2f}x |\n\n"
        f"Same decoder trajectory, bit for bit: **{s['same_trajectory']}**.\n\n"
        f"## Repeated zero-shot ({z['images']} test images, loose boxes, {z['passes']} passes)\n\n"
        "| pass | uncached s | cached s |\n|---|---|---|\n"
        + "".join(
            f"| {i + 1} | {a:.1f} | {b:.1f} |\n"
            for i, (a, b) in enumerate(
                zip(z["seconds"]["uncached"], z["seconds"]["cached"], strict=True)
            )
        )
        + f"\nRepeated pass speed-up: **{f(z['speedup_repeat'])}x**; Dice equal in every pass: "
        f"**{z['same_dice']}** ({z['dice']['cached'][0]:.4f}).\n\n"
        f"Cache at the end: {c['entries']} embeddings, {c['bytes'] / 2**20:.0f} MiB (peak "
        f"{c['peak_bytes'] / 2**20:.0f} MiB of {c['max_bytes'] / 2**20:.0f} MiB), "
        f"{c['hits']} hits, {c['misses']} misses, {c['evictions']} evictions.\n"
    )


if __name__ == "__main__":
    main()
