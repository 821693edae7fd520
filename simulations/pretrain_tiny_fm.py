"""Pretrain the embedded default FM ("tiny") on the general-domain corpus.

    python simulations/pretrain_tiny_fm.py --steps 4000 --out baps_fed/fm/weights/tiny_sam.pt

Everything is seeded; the weights file records the command, seed, steps, wall time, device and
the held-out in-domain Dice, so how the shipped weights were made can be read from the file itself.
On a GPU (``--device cuda``, bf16 autocast) the same recipe runs about a hundred times faster; a
``--max-minutes`` budget then bounds the run: the learning-rate schedule follows whichever of
steps and time is further along, so a run cut by its budget still ends its cosine decay.
Loss: BCE + soft Dice on the low-resolution logits of mask token 0 (the single-mask output the
black box returns), plus MSE of the IoU head against the actual IoU, as in SAM's recipe.

Prompts (``--prompts point,box``): each step draws one kind; a point step gives every image 1-3
points (the first positive), a box step one box, tight or loose per image (``baps_fed.data.boxes``,
the protocols evaluation uses). ``--train-only box-embeddings`` trains nothing but the prompt
encoder's two box-corner type embeddings (``point_embeddings[2]`` and ``[3]``), which a query with
points only never reads: a box stage that leaves every point answer bit-identical. The image
encoder then runs without gradients. Held-out Dice is reported per prompt (point, tight, loose).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from baps_fed.data.boxes import BOX_PROTOCOLS, BoxConfig, sample_box
from baps_fed.data.general import make_general_scene
from baps_fed.evaluation.metrics import dice_per_image
from baps_fed.fm.sam_batched import BatchedSam
from baps_fed.fm.sam_builder import SAM_ARCHITECTURES, build_sam
from baps_fed.fm.tiny import load_tiny_sam, save_tiny_weights

HOLDOUT_SEED0 = 10_000_000  # held-out scenes never overlap the training seeds
PROMPT_KINDS = ("point", "box")
EVAL_PROMPTS = ("point", *BOX_PROTOCOLS)  # held-out Dice is reported for each
TRAIN_ONLY = ("all", "decoder", "box-embeddings")
BOX_CONFIGS = {p: BoxConfig(protocol=p) for p in BOX_PROTOCOLS}


def _scene(seed: int):
    s = make_general_scene(seed)
    return s.image, s.labels, s.num_objects


def make_corpus(seeds: range, workers: int) -> list:
    with Pool(workers) as pool:
        return [s for s in pool.map(_scene, seeds, chunksize=64) if s[2] > 0]


def make_batch(corpus: list, rng: np.random.Generator, batch: int, kind: str = "point"):
    """Images, one object's visible mask each, and their prompts: 1-3 points (first always
    positive) with labels, or one box each, tight or loose at random (points/labels None)."""
    n_points = int(rng.choice([1, 1, 1, 2, 3])) if kind == "point" else 0
    images, masks, points, labels, boxes, keys = [], [], [], [], [], []
    for i in rng.integers(len(corpus), size=batch):
        image, lab, n = corpus[i]
        mask = lab == rng.integers(1, n + 1)
        flip = rng.random() < 0.5
        if flip:
            image, mask = image[:, ::-1], mask[:, ::-1]
        keys.append(2 * i + flip)  # the row of this (scene, mirrored) in an embedding cache
        if kind == "box":
            protocol = BOX_PROTOCOLS[int(rng.integers(len(BOX_PROTOCOLS)))]
            boxes.append(sample_box(mask, rng, BOX_CONFIGS[protocol]))
        pts, lbs = [], []
        for j in range(n_points):
            positive = j == 0 or rng.random() < 0.5
            rows, cols = np.nonzero(mask if positive else ~mask)
            k = rng.integers(rows.size)
            pts.append((cols[k], rows[k]))
            lbs.append(int(positive))
        images.append(image)
        masks.append(mask)
        points.append(pts)
        labels.append(lbs)
    x = torch.from_numpy(np.ascontiguousarray(np.stack(images))).permute(0, 3, 1, 2).float()
    y = torch.from_numpy(np.ascontiguousarray(np.stack(masks))).float()[:, None]
    key = torch.tensor(keys)
    if kind == "box":
        return x, y, None, None, torch.from_numpy(np.stack(boxes)), key
    return x, y, torch.tensor(points, dtype=torch.float32), torch.tensor(labels), None, key


@torch.no_grad()
def embed_corpus(model: BatchedSam, corpus: list, device: torch.device) -> torch.Tensor:
    """Image embeddings of every scene and its mirror image, row 2 i + mirrored (a frozen
    encoder's output, computed once)."""
    rows = []
    for i in range(0, len(corpus), 32):
        images = np.stack([c[0] for c in corpus[i : i + 32]])
        both = np.stack([images, images[:, :, ::-1]], axis=1).reshape(-1, *images.shape[1:])
        x = torch.from_numpy(np.ascontiguousarray(both)).permute(0, 3, 1, 2).float()
        rows.append(model.embed(x.to(device)).float())
    return torch.cat(rows)


def loss_fn(model: BatchedSam, x, y, p, lab, box=None, emb=None, frozen_encoder=False):
    """``emb``: the images' embeddings when cached; ``frozen_encoder``: embed without grad."""
    hw = (x.shape[2], x.shape[3])
    if emb is None:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen_encoder):
            emb = model.embed(x)
    masks, iou_pred = model.decode(emb, p, lab, hw, box)
    logits = masks[:, 0].float()  # the loss in float32 also under bf16 autocast
    iou_pred = iou_pred.float()
    target = F.adaptive_avg_pool2d(y, logits.shape[-2:])[:, 0]  # soft target at low res
    prob = torch.sigmoid(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target)
    inter = (prob * target).sum((1, 2))
    dice = 1 - (2 * inter + 1) / (prob.sum((1, 2)) + target.sum((1, 2)) + 1)
    hard = (prob > 0.5).float()
    true_iou = (hard * target).sum((1, 2)) / ((hard + target).clamp(max=1).sum((1, 2)) + 1e-6)
    iou_loss = F.mse_loss(iou_pred[:, 0], true_iou.detach())
    return bce + dice.mean() + iou_loss


@torch.inference_mode()
def holdout_dice(model: BatchedSam, corpus: list, seed: int, prompt: str = "point") -> float:
    """Mean per-image Dice on held-out scenes, threshold 0 logit; ``prompt``: one uniform
    positive point, or one tight or loose box (same object per scene for every prompt)."""
    rng = np.random.default_rng(seed)
    device = next(model.parameters()).device
    scores = []
    for i in range(0, len(corpus), 32):
        chunk = corpus[i : i + 32]
        images, masks, prompts = [], [], []
        for image, lab, k in chunk:
            mask = lab == rng.integers(1, k + 1)
            if prompt == "point":
                rows, cols = np.nonzero(mask)
                j = rng.integers(rows.size)
                prompts.append([(cols[j], rows[j])])
            else:
                prompts.append(sample_box(mask, rng, BOX_CONFIGS[prompt]))
            images.append(image)
            masks.append(mask)
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().to(device)
        if prompt == "point":
            pts = torch.tensor(prompts, dtype=torch.float32, device=device)
            logits = model(x, pts, torch.ones(len(chunk), 1, device=device))
        else:
            logits = model(x, boxes=torch.from_numpy(np.stack(prompts)).to(device))
        scores.extend(dice_per_image(logits.float().cpu().numpy() > 0, np.stack(masks)))
    return float(np.mean(scores))


def holdout_report(model: BatchedSam, corpus: list, seed: int) -> dict[str, float]:
    """Held-out Dice for each evaluation prompt (point, tight box, loose box)."""
    return {p: holdout_dice(model, corpus, seed, p) for p in EVAL_PROMPTS}


def trainable(model: BatchedSam, train_only: str) -> list[torch.nn.Parameter]:
    """Freeze all but what ``train_only`` names; the parameters left to train."""
    if train_only == "all":
        return list(model.parameters())
    if train_only == "decoder":  # prompt encoder and mask decoder; the image encoder frozen
        parts = (model.sam.prompt_encoder, model.sam.mask_decoder)
        keep = {id(p) for m in parts for p in m.parameters()}
    else:
        keep = {id(model.sam.prompt_encoder.point_embeddings[i].weight) for i in (2, 3)}
    for param in model.parameters():
        param.requires_grad_(id(param) in keep)
    return [p for p in model.parameters() if p.requires_grad]


def _kinds(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in PROMPT_KINDS]
    if not kinds or bad:
        raise argparse.ArgumentTypeError(f"--prompts: a comma list of {PROMPT_KINDS}, got {text!r}")
    return kinds


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--corpus", type=int, default=24000, help="training scenes")
    ap.add_argument("--corpus-start", type=int, default=0, help="first scene seed")
    ap.add_argument("--holdout", type=int, default=500)
    ap.add_argument("--eval-every", type=int, default=1000, help="steps between held-out checks")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--workers", type=int, default=None, help="scene generators (default: threads)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument(
        "--max-minutes", type=float, default=None, help="training time budget (see module doc)"
    )
    ap.add_argument(
        "--init",
        type=Path,
        default=None,
        help="continue from these tiny weights (a second stage); recorded in meta",
    )
    ap.add_argument(
        "--prompts",
        type=_kinds,
        default=["point"],
        help="prompt kinds, one drawn per step: point, box or point,box (boxes tight or loose)",
    )
    ap.add_argument(
        "--train-only",
        choices=TRAIN_ONLY,
        default="all",
        help="decoder: prompt encoder + mask decoder (image encoder frozen); box-embeddings: only "
        "the two box-corner embeddings (point answers unchanged)",
    )
    ap.add_argument(
        "--cache-embeddings",
        action="store_true",
        help="with a frozen image encoder: embed the corpus (and its mirror) once, up front",
    )
    ap.add_argument("--out", type=Path, default=Path("baps_fed/fm/weights/tiny_sam.pt"))
    args = ap.parse_args(argv)
    if args.train_only == "box-embeddings" and args.prompts != ["box"]:
        ap.error("--train-only box-embeddings: point prompts never reach them; use --prompts box")

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    workers = args.workers or args.threads
    device = torch.device(args.device)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    corpus = make_corpus(range(args.corpus_start, args.corpus_start + args.corpus), workers)
    # made before CUDA starts: forking scene generators from a CUDA process is unsafe
    holdout = make_corpus(range(HOLDOUT_SEED0, HOLDOUT_SEED0 + max(args.holdout, 200)), workers)
    print(f"corpus: {len(corpus)} scenes in {time.time() - t0:.0f}s", flush=True)

    cfg = SAM_ARCHITECTURES["tiny"]
    model = BatchedSam(build_sam(cfg))
    stages = []
    if args.init is not None:
        sam, init_meta = load_tiny_sam(args.init)
        model = BatchedSam(sam)
        stages = [*init_meta.get("stages", []), init_meta]
    model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    params = trainable(model, args.train_only)
    frozen_encoder = not any(p.requires_grad for p in model.sam.image_encoder.parameters())
    print(
        f"tiny SAM: {n_params / 1e6:.2f}M parameters on {device}, "
        f"{sum(p.numel() for p in params)} trained ({args.train_only}); prompts {args.prompts}",
        flush=True,
    )
    if args.init is not None:
        model.eval()
        before = holdout_report(model, holdout[:200], 1)
        print("  held-out Dice at init " + _fmt(before), flush=True)
    cache = None
    if args.cache_embeddings:
        if not frozen_encoder:
            ap.error(
                "--cache-embeddings needs a frozen image encoder (--train-only decoder or "
                "box-embeddings)"
            )
        t1 = time.time()
        cache = embed_corpus(model, corpus, device)
        print(f"embedded {cache.shape[0]} images in {time.time() - t1:.0f}s", flush=True)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    # bf16 autocast on a GPU; the CPU keeps float32 (bf16 matmuls are slow there)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    budget_s = args.max_minutes * 60 if args.max_minutes else math.inf
    warmup = 0.05

    def lr_at(progress: float) -> float:
        if progress < warmup:
            return args.lr * min(1.0, (progress + 1 / args.steps) / warmup)
        return args.lr * 0.5 * (1 + math.cos(math.pi * (progress - warmup) / (1 - warmup)))

    t0 = time.time()
    running = None
    step = 0
    while True:
        progress = max(step / args.steps, (time.time() - t0) / budget_s)
        if progress >= 1:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(progress)
        model.train()
        kind = (
            args.prompts[int(rng.integers(len(args.prompts)))]
            if len(args.prompts) > 1
            else args.prompts[0]
        )
        batch = make_batch(corpus, rng, args.batch, kind)
        x, y, p, lab, box, key = (
            None if t is None else t.to(device, non_blocking=True) for t in batch
        )
        emb = None if cache is None else cache[key]
        with autocast:
            loss = loss_fn(model, x, y, p, lab, box, emb, frozen_encoder)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        # a running mean kept on the device: no host sync per step
        running = loss.detach() if running is None else 0.98 * running + 0.02 * loss.detach()
        if step % 100 == 0:
            el = time.time() - t0
            print(
                f"step {step:5d}  loss {running.item():.4f}  lr {lr_at(progress):.2e}  "
                f"{el / 60:.1f} min  progress {progress:.3f}",
                flush=True,
            )
        if step > 0 and step % args.eval_every == 0:
            model.eval()
            print("  held-out Dice " + _fmt(holdout_report(model, holdout[:200], 1)), flush=True)
            # the latest weights survive a run killed before its end (no provenance record)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            save_tiny_weights(args.out.with_suffix(".partial.pt"), model.sam, cfg, {"steps": step})
        step += 1
    minutes = (time.time() - t0) / 60
    model.eval()
    by_prompt = holdout_report(model, holdout[: args.holdout], 1)
    dice = by_prompt["point"]
    print(f"final held-out in-domain Dice ({args.holdout} scenes): " + _fmt(by_prompt), flush=True)
    meta = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "args": {k: str(v) for k, v in vars(args).items()},
        "parameters": n_params,
        "train_minutes": round(minutes, 1),
        "steps_done": step,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "holdout_dice": round(dice, 4),  # one positive point
        "holdout_dice_by_prompt": {k: round(v, 4) for k, v in by_prompt.items()},
        "prompts": args.prompts,
        "train_only": args.train_only,
        "holdout_scenes": min(args.holdout, len(holdout)),
        "torch": str(torch.__version__),
        "date": dt.date.today().isoformat(),
        "stages": stages,  # earlier stages this one continued from (--init)
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_tiny_weights(args.out, model.sam, cfg, meta)
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)", flush=True)


def _fmt(by_prompt: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in by_prompt.items())


if __name__ == "__main__":
    main()
