"""FM throughput: images/s of an FM at batch 1 and batch 16, and batched vs per-image calls;
by runtime and precision, with the embedding cache off and warm.

    python simulations/bench_fm_throughput.py --fm tiny --images 64 --repeats 5
    python simulations/bench_fm_throughput.py --fm litemedsam --size 256 --images 16 \
        --repeats 3 --chunks 1 2 4 8 --runtimes torch openvino \
        --out simulations/results/fm_throughput_litemedsam
    python simulations/bench_fm_throughput.py --fm litemedsam --device cuda --size 256 \
        --images 256 --chunks 64 --dtypes float32 bfloat16      # on a GPU

Prompts are one point per image, or one tight box where the FM takes boxes only (LiteMedSAM).
Configurations (``--runtimes`` x ``--dtypes``): one call of all images with the cache off
(every image encoded) and with the cache warm (the same images, new prompts: no encoder pass);
the plain torch float32 forward without cache is the reference of every ratio.

The two ways of running the same images are interleaved repeat by repeat, so machine noise hits
both alike; the ratio of medians is the number to read. Writes
simulations/results/fm_throughput.{json,md}.
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
from baps_fed.data.modalities import synthetic_dataset
from baps_fed.data.prompts import POINT, PromptConfig
from baps_fed.evaluation.evaluate import sample_prompts
from baps_fed.fm.spec import load_fm


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fm", default="tiny", help="FM spec (a local one: no ?options)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--runtimes", nargs="+", default=["torch"], help="encoder runtimes (CPU)")
    ap.add_argument("--dtypes", nargs="+", default=["float32"], help="autocast precisions")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", type=int, default=128, help="synthetic image size (px)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--chunks",
        type=int,
        nargs="+",
        default=[4, 8, 16, 32, 64],
        help="images per forward pass inside one call (the FM's max_batch) to compare",
    )
    ap.add_argument("--out", type=Path, default=Path("simulations/results/fm_throughput"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    fm = load_fm(f"{args.fm}?cache_mb=0&dtype=float32", device=args.device)
    ds = synthetic_dataset("colonoscopy", args.images, seed=123, size=args.size)
    images = np.stack([s.image for s in ds])
    prompting = (
        POINT
        if "point" in fm.prompt_kinds
        else PromptConfig(kind="box", box=BoxConfig(protocol="tight"))
    )
    prompts = sample_prompts(list(ds), 0, prompting)
    n = len(images)

    def segment(part: slice) -> np.ndarray:
        return fm.segment(images[part], **prompts[part].query())

    def per_image() -> None:
        for i in range(n):
            segment(slice(i, i + 1))

    def batch16() -> None:
        for i in range(0, n, 16):
            segment(slice(i, i + 16))

    def one_call() -> None:
        segment(slice(None))

    # Same outputs either way (up to float reassociation), else the comparison means nothing.
    ref = segment(slice(None))
    per = np.concatenate([segment(slice(i, i + 1)) for i in range(n)])
    max_diff = float(np.abs(ref - per).max())
    per_image(), batch16(), one_call()  # warm-up

    default_chunk = getattr(fm, "max_batch", None)
    if default_chunk is None:  # a remote FM chunks on its own side
        args.chunks = []

    def one_call_in_chunks(size: int):
        def run() -> None:
            fm.max_batch = size
            try:
                segment(slice(None))
            finally:
                fm.max_batch = default_chunk

        return run

    configs = {
        f"{runtime}/{dtype}/{cache}": load_fm(
            f"{args.fm}?runtime={runtime}&dtype={dtype}&cache_mb={0 if cache == 'off' else 4096}",
            device=args.device,
        )
        for runtime in args.runtimes
        for dtype in args.dtypes
        for cache in ("off", "warm")
    }
    shifted = sample_prompts(list(ds), 1, prompting)  # other prompts: a warm cache's workload
    for cfg_fm in configs.values():  # warm-up; fills the warm caches
        cfg_fm.segment(images, **prompts.query())

    def config_call(cfg_fm) -> None:
        cfg_fm.segment(images, **shifted.query())

    reference_out = fm.segment(images, **shifted.query())
    config_out = {
        name: np.abs(cfg_fm.segment(images, **shifted.query()) - reference_out).max()
        for name, cfg_fm in configs.items()
    }
    times: dict[str, list[float]] = {"batch1": [], "batch16": [], "one_call": []}
    times |= {f"chunk{c}": [] for c in args.chunks}
    times |= {f"config:{name}": [] for name in configs}
    for _ in range(args.repeats):
        times["batch1"].append(_timed(per_image))
        times["batch16"].append(_timed(batch16))
        times["one_call"].append(_timed(one_call))
        for c in args.chunks:
            times[f"chunk{c}"].append(_timed(one_call_in_chunks(c)))
        for name, cfg_fm in configs.items():
            times[f"config:{name}"].append(_timed(lambda f=cfg_fm: config_call(f)))
    med = {k: statistics.median(v) for k, v in times.items()}
    reference = "config:torch/float32/off"
    ref_s = med.get(reference, med["one_call"])
    result = {
        "fm": args.fm,
        "images": n,
        "prompt": prompting.describe(),
        "image_size": list(images.shape[1:3]),
        "repeats": args.repeats,
        "threads": args.threads,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "images_per_s_batch1": n / med["batch1"],
        "images_per_s_batch16": n / med["batch16"],
        "images_per_s_one_call": n / med["one_call"],
        "speedup_batch16_vs_per_image": med["batch1"] / med["batch16"],
        "speedup_one_call_vs_per_image": med["batch1"] / med["one_call"],
        "default_chunk": default_chunk,
        "images_per_s_by_chunk": {c: n / med[f"chunk{c}"] for c in args.chunks},
        "max_abs_logit_diff_batched_vs_per_image": max_diff,
        "device": args.device,
        "configs": {
            name: {
                "images_per_s": n / med[f"config:{name}"],
                "speedup_vs_torch_float32_uncached": ref_s / med[f"config:{name}"],
                "max_abs_logit_diff_vs_torch_float32": float(config_out[name]),
            }
            for name in configs
        },
        "seconds": times,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    md = (
        f"# FM throughput ({args.fm}, {n} images {images.shape[1]}x{images.shape[2]}, "
        f"{args.threads} threads, median of {args.repeats}; {prompting.describe()} per image)\n\n"
        "| mode | images/s |\n|---|---|\n"
        f"| per-image calls (batch 1) | {result['images_per_s_batch1']:.1f} |\n"
        f"| batch 16 | {result['images_per_s_batch16']:.1f} |\n"
        f"| one call of {n} (forward passes of {default_chunk}) | "
        f"{result['images_per_s_one_call']:.1f} |\n\n"
        f"Batched ({n} in one call) vs per-image calls: "
        f"**{result['speedup_one_call_vs_per_image']:.2f}x**; batch 16 vs per-image: "
        f"{result['speedup_batch16_vs_per_image']:.2f}x. "
        f"Max |logit| difference batched vs per-image: {max_diff:.2e}.\n\n"
        f"One call of {n} images, by images per forward pass (the FM's `max_batch`; its "
        f"default here: {default_chunk}):\n\n"
        "| images per pass | images/s |\n|---|---|\n"
        + "".join(f"| {c} | {v:.1f} |\n" for c, v in result["images_per_s_by_chunk"].items())
        + f"\nBy encoder runtime, precision and embedding cache ({args.device}; one call of {n}; "
        "warm: the same images with new prompts):\n\n"
        "| runtime | precision | cache | images/s | vs torch float32 uncached | max logit diff |\n"
        "|---|---|---|---|---|---|\n"
        + "".join(
            f"| {name.split('/')[0]} | {name.split('/')[1]} | {name.split('/')[2]} | "
            f"{c['images_per_s']:.1f} | {c['speedup_vs_torch_float32_uncached']:.2f}x | "
            f"{c['max_abs_logit_diff_vs_torch_float32']:.1e} |\n"
            for name, c in result["configs"].items()
        )
    )
    args.out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
