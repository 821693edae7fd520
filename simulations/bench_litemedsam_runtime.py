"""LiteMedSAM's image encoder on ONNX Runtime and OpenVINO against torch: speed and Dice.

    python simulations/bench_litemedsam_runtime.py --data ../shared/data/drishti-gs-512 \\
        --n 101 --repeats 5 --threads 2

On CPU the TinyViT encoder is ~94 % of a LiteMedSAM query. Each runtime runs the SAME loaded
encoder module, exported by ``baps_fed.fm.runtime.fast_encoder``; the prompt encoder and mask
decoder stay in torch.
- Speed: encoder images/s at batch 1 and batch 4 on ``--threads`` intra-op threads, on the
  encoder inputs of the first ``--speed-images`` real images. Runtimes alternate inside every
  repeat (their order rotated from repeat to repeat), so machine noise hits all of them alike;
  the median over ``--repeats`` is reported, and its ratio to torch float32.
- Quality: the full LiteMedSAM with each runtime's encoder on the real Drishti-GS images (read
  as ``bench_litemedsam.py`` reads them, 512 px, one image per pass as ``--fm litemedsam`` runs
  on CPU), with tight and loose boxes (same seeded box per image for every runtime): mean Dice,
  its difference to torch, the largest per-image Dice drop, and the largest absolute difference
  of the image embeddings against torch's.
Goals: Dice within 0.002 of torch (tight and loose), no image worse by more than 0.02, encoder
at least 2x torch float32 images/s. Writes ``--out`` .json and .md.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from baps_fed.data.boxes import BoxConfig  # noqa: E402
from baps_fed.data.prompts import PromptConfig  # noqa: E402
from baps_fed.data.sample import SegmentationDataset  # noqa: E402
from baps_fed.data.sources import open_source  # noqa: E402
from baps_fed.evaluation.evaluate import evaluate_fm  # noqa: E402
from baps_fed.fm.litemedsam import IMG_SIZE, load_litemedsam  # noqa: E402
from baps_fed.fm.runtime import RUNTIMES, fast_encoder  # noqa: E402
from baps_fed.fm.sam_batched import BatchedSam  # noqa: E402
from baps_fed.fm.torch_fm import TorchSamFM  # noqa: E402

PROTOCOLS = {
    "tight": PromptConfig(kind="box", box=BoxConfig(protocol="tight")),
    "loose": PromptConfig(kind="box", box=BoxConfig(protocol="loose")),
}
GOAL_DICE = 0.002
GOAL_IMAGE_DROP = 0.02
GOAL_SPEEDUP = 2.0
FLOOR_SPEEDUP = 1.3


class Recorder:
    """An encoder that remembers its embeddings by input (``record``), answers repeats from
    memory (``reuse``: the loose pass encodes the images of the tight pass again), and measures
    its difference to a reference's remembered embeddings (``reference``)."""

    def __init__(self, encoder) -> None:
        self.encoder = encoder
        self.memo: dict[str, torch.Tensor] = {}
        self.record = self.reuse = False
        self.reference: dict[str, torch.Tensor] | None = None
        self.max_abs = self.sum_abs = 0.0
        self.count = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = hashlib.sha1(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
        if self.reuse and key in self.memo:
            return self.memo[key]
        with torch.inference_mode():
            out = self.encoder(x)
        if self.record:
            self.memo[key] = out
        if self.reference is not None:
            diff = (out - self.reference[key]).abs()
            self.max_abs = max(self.max_abs, float(diff.max()))
            self.sum_abs += float(diff.sum())
            self.count += diff.numel()
        return out


def build_fm(runtime: str, threads: int, cache_dir: Path | None) -> tuple[TorchSamFM, float]:
    """The full LiteMedSAM FM with ``runtime``'s encoder, and the seconds it took to get it."""
    t0 = time.perf_counter()
    model = BatchedSam(load_litemedsam(), preprocess="litemedsam")
    encoder = fast_encoder(runtime, model.sam.image_encoder, IMG_SIZE, cache_dir, threads)
    fm = TorchSamFM(
        model,
        "litemedsam",
        max_batch=1,
        prompt_kinds=frozenset({"box"}),
        encoder=Recorder(encoder),
    )
    return fm, time.perf_counter() - t0


def encoder_inputs(fm: TorchSamFM, data: SegmentationDataset, n: int) -> torch.Tensor:
    """The encoder inputs [n,3,256,256] of the first n images (the FM's own preprocessing)."""
    with torch.inference_mode():
        return torch.cat(
            [
                fm.model.prepare(torch.from_numpy(s.image[None]).permute(0, 3, 1, 2).float())
                for s in list(data)[:n]
            ]
        )


def encoder_speed(
    encoders: dict, x: torch.Tensor, batches: list[int], repeats: int
) -> tuple[dict, list[float]]:
    """Median images/s per (runtime, batch), runtimes interleaved within each repeat; and the
    1-minute load average after each repeat (the machine is shared)."""

    def once(enc, b: int) -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, x.shape[0], b):
                enc(x[i : i + b])
        return x.shape[0] / (time.perf_counter() - t0)

    names = list(encoders)
    for name in names:  # warm-up: first calls allocate, compile and pick kernels
        for b in batches:
            with torch.inference_mode():
                encoders[name](x[:b])
    runs: dict[tuple[str, int], list[float]] = {(n, b): [] for n in names for b in batches}
    loads: list[float] = []
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for b in batches:
            for name in order:
                runs[name, b].append(once(encoders[name], b))
        loads.append(os.getloadavg()[0])
        print(
            f"repeat {r + 1}/{repeats} (load {loads[-1]:.1f}): "
            + ", ".join(f"{n} b{b} {v[-1]:.2f} img/s" for (n, b), v in runs.items()),
            flush=True,
        )
    out: dict = {}
    for name in names:
        out[name] = {}
        for b in batches:
            med = statistics.median(runs[name, b])
            ref = statistics.median(runs["torch", b])
            out[name][f"b{b}_img_s"] = med
            out[name][f"b{b}_runs"] = runs[name, b]  # type: ignore[assignment]
            out[name][f"b{b}_ratio"] = med / ref
    return out, loads


def quality(fms: dict[str, TorchSamFM], data: SegmentationDataset, seed: int) -> dict:
    """Per protocol and runtime: Dice against torch's; embedding differences (tight pass)."""
    out: dict = {}
    ref_dice: dict[str, np.ndarray] = {}
    recorders: dict[str, Recorder] = {name: fm.encoder for name, fm in fms.items()}  # type: ignore[misc]
    for proto, cfg in PROTOCOLS.items():
        out[proto] = {}
        for name, fm in fms.items():
            rec = recorders[name]
            rec.record = proto == "tight"
            rec.reuse = proto != "tight"
            rec.reference = (
                recorders["torch"].memo if proto == "tight" and name != "torch" else None
            )
            t0 = time.perf_counter()
            scores = evaluate_fm(fm, data, seed, cfg, batch_size=1)
            seconds = time.perf_counter() - t0
            if name == "torch":
                ref_dice[proto] = scores.dice
            drop = ref_dice[proto] - scores.dice
            row = {
                "images": len(scores.names),
                "dice": float(scores.dice.mean()),
                "dice_diff": float(scores.dice.mean() - ref_dice[proto].mean()),
                "worst_image_drop": float(drop.max()),
                "worst_image": scores.names[int(drop.argmax())],
                "largest_image_abs_diff": float(np.abs(drop).max()),
                "images_changed": int((np.abs(drop) > 1e-6).sum()),
            }
            if proto == "tight":
                row["query_img_s"] = len(scores.names) / seconds
            if rec.reference is not None:
                row["embedding_max_abs_diff"] = rec.max_abs
                row["embedding_mean_abs_diff"] = rec.sum_abs / max(rec.count, 1)
            out[proto][name] = row
            print(proto, name, json.dumps(row), flush=True)
    for rec in recorders.values():
        rec.memo.clear()
    return out


def versions(runtimes: list[str]) -> dict[str, str]:
    names = ["torch"] + [
        p for p in ("onnxruntime", "onnx", "openvino") if p in runtimes or p == "onnx"
    ]
    out = {}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            out[n] = "not installed"
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/drishti-gs-512")
    ap.add_argument("--n", type=int, default=101, help="real images for the Dice comparison")
    ap.add_argument("--repeats", type=int, default=5, help="timing repeats (median reported)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    ap.add_argument("--speed-images", type=int, default=8, help="images per timing run")
    ap.add_argument("--seed", type=int, default=0, help="box seed")
    ap.add_argument("--cache-dir", type=Path, default=None, help="default: a fresh temp folder")
    ap.add_argument("--skip-quality", action="store_true", help="timing only")
    ap.add_argument("--out", type=Path, default=Path("simulations/results/litemedsam_runtime"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    runtimes = ["torch"] + [r for r in args.runtimes if r != "torch"]  # torch: the reference
    data = open_source(args.data, layout="generic")[: args.n]
    cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="baps-fed-runtimes-"))
    fms, build_s = {}, {}
    for rt in runtimes:
        fms[rt], build_s[rt] = build_fm(rt, args.threads, cache)
        print(f"{rt}: ready in {build_s[rt]:.1f} s (load + export)", flush=True)
    reuse_s = {}
    for rt in runtimes[1:]:  # the same export again: from the cache folder
        reuse_s[rt] = build_fm(rt, args.threads, cache)[1]
    report: dict = {
        "command": "python simulations/bench_litemedsam_runtime.py "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        "args": {k: str(v) for k, v in vars(args).items()},
        "versions": versions(runtimes),
        "cpu": cpu_name(),
        "images": len(data),
        "build_seconds": build_s,
        "cached_build_seconds": reuse_s,
    }
    x = encoder_inputs(fms["torch"], data, args.speed_images)
    report["speed"], report["load_average"] = encoder_speed(
        {rt: fm.encoder.encoder for rt, fm in fms.items()}, x, args.batches, args.repeats
    )
    if not args.skip_quality:
        report["quality"] = quality(fms, data, args.seed)
    report["verdict"] = verdict(report, args.batches)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report, args.batches))
    print(markdown(report, args.batches))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def verdict(report: dict, batches: list[int]) -> dict[str, dict]:
    """Per runtime: which goals it meets."""
    out = {}
    for rt, s in report["speed"].items():
        if rt == "torch":
            continue
        v: dict = {f"speedup_b{b}": s[f"b{b}_ratio"] for b in batches}
        v["speed_goal"] = all(s[f"b{b}_ratio"] >= GOAL_SPEEDUP for b in batches)
        v["speed_floor"] = all(s[f"b{b}_ratio"] >= FLOOR_SPEEDUP for b in batches)
        if "quality" in report:
            rows = [report["quality"][p][rt] for p in PROTOCOLS]
            v["dice_goal"] = all(abs(r["dice_diff"]) <= GOAL_DICE for r in rows)
            v["image_goal"] = all(r["worst_image_drop"] <= GOAL_IMAGE_DROP for r in rows)
        out[rt] = v
    return out


def markdown(report: dict, batches: list[int]) -> str:
    a = report["args"]
    loads = report["load_average"]
    vers = ", ".join(f"{k} {v}" for k, v in report["versions"].items())
    lines = [
        "# LiteMedSAM image encoder: torch vs ONNX Runtime vs OpenVINO (CPU)",
        "",
        f"`{report['command']}`",
        "",
        f"{report['cpu']}, {a['threads']} intra-op threads; {vers}. Every runtime runs the same "
        "loaded TinyViT encoder (exported by `baps_fed/fm/runtime.py`, float32); the prompt "
        "encoder and mask decoder stay in torch.",
        "",
        f"## Encoder speed ({a['speed_images']} real images' encoder inputs per run, median of "
        f"{a['repeats']} interleaved repeats)",
        "",
        "| runtime | " + " | ".join(f"batch {b} img/s | x torch" for b in batches) + " |",
        "|---|" + "---|---|" * len(batches),
    ]
    for rt, s in report["speed"].items():
        cells = " | ".join(f"{s[f'b{b}_img_s']:.2f} | {s[f'b{b}_ratio']:.2f}x" for b in batches)
        lines.append(f"| {rt} | {cells} |")
    lines += [
        "",
        "Load + first export, seconds: "
        + ", ".join(f"{k} {v:.1f}" for k, v in report["build_seconds"].items())
        + "; again from the cache folder: "
        + ", ".join(f"{k} {v:.1f}" for k, v in report["cached_build_seconds"].items())
        + ".",
        "",
        f"1-minute load average after each repeat: {', '.join(f'{v:.1f}' for v in loads)} "
        f"(the benchmark itself accounts for {a['threads']}; above that, other jobs competed for "
        "the cores, and torch's OpenMP threads lose most when one of them is descheduled).",
    ]
    if "quality" in report:
        lines += [
            "",
            f"## Dice of the full LiteMedSAM, Drishti-GS ({report['images']} real images, 512 px, "
            "one seeded box per image, the same for every runtime)",
            "",
            "| boxes | runtime | mean Dice | diff to torch | worst image drop | images changed "
            "| embedding max abs diff | query img/s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for proto, rows in report["quality"].items():
            for rt, r in rows.items():
                emb = r.get("embedding_max_abs_diff")
                emb_cell = "" if emb is None else f"{emb:.2e}"
                speed_cell = f"{r['query_img_s']:.2f}" if "query_img_s" in r else ""
                lines.append(
                    f"| {proto} | {rt} | {r['dice']:.4f} | {r['dice_diff']:+.5f} | "
                    f"{r['worst_image_drop']:+.4f} | {r['images_changed']} | {emb_cell} | "
                    f"{speed_cell} |"
                )
        lines += [
            "",
            "Worst image drop: the largest (torch Dice - runtime Dice) over the images. Embedding "
            "max abs diff: against torch's embeddings of the same images (values up to ~0.7), "
            "tight pass; the loose pass reuses each runtime's own tight-pass embeddings (same "
            "images, same encoder input). Query img/s: the tight evaluation pass (encoder + "
            "decoder + Dice), runtimes one after another, not interleaved.",
        ]
    lines += ["", "## Goals", ""]
    for rt, v in report["verdict"].items():
        speed = ", ".join(f"batch {b} {v[f'speedup_b{b}']:.2f}x" for b in batches)
        parts = [
            f"encoder {speed} torch float32 "
            f"({'meets' if v['speed_goal'] else 'misses'} the {GOAL_SPEEDUP:.0f}x goal"
            + ("" if v["speed_floor"] else f"; below {FLOOR_SPEEDUP}x")
            + ")"
        ]
        if "dice_goal" in v:
            parts.append(
                f"Dice within {GOAL_DICE} of torch: {'yes' if v['dice_goal'] else 'NO'}; "
                f"no image worse by more than {GOAL_IMAGE_DROP}: "
                f"{'yes' if v['image_goal'] else 'NO'}"
            )
        lines.append(f"- {rt}: " + "; ".join(parts) + ".")
    if not any(v["speed_floor"] for v in report["verdict"].values()):
        lines.append(f"- Neither runtime reaches {FLOOR_SPEEDUP}x torch float32.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
