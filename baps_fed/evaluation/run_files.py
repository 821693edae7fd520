"""A run's human-readable outputs: metrics CSV/JSON, report.md and PNG plots."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: sites and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from baps_fed.data.prompts import Prompts  # noqa: E402


def check_folder(out: Path, markers: Sequence[str], resume: bool, overwrite: bool) -> None:
    """A new run never replaces one by accident: a folder holding any of ``markers`` (files
    only a run writes) is refused unless the run is resumed or the user asked to overwrite."""
    if resume and overwrite:
        raise ValueError("give either --resume (continue the run) or --overwrite (replace it)")
    if resume or overwrite:
        return
    held = [name for name in markers if (out / name).exists()]
    if held:
        raise FileExistsError(
            f"{out} holds a run ({', '.join(held)}): continue it with --resume "
            "(resume = true), or replace it with --overwrite (overwrite = true)"
        )


def write_history(run_dir: Path, history: Sequence[dict]) -> None:
    keys = sorted({k for row in history for k in row}, key=lambda k: (k != "step", k))
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)


def write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def plot_dice(run_dir: Path, history: Sequence[dict], zero_shot: float) -> Path:
    rows = [r for r in history if "val_dice" in r]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(
        [r["fm_images"] for r in rows],
        [r["val_dice"] for r in rows],
        marker="o",
        ms=3,
        label="prompted FM (validation)",
    )
    ax.axhline(zero_shot, color="grey", ls="--", label="zero-shot")
    ax.set_xlabel("FM image-queries (training)")
    ax.set_ylabel("Dice")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = run_dir / "dice_over_queries.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_examples(path: Path, columns: dict[str, np.ndarray], prompts: Prompts) -> Path:
    """A grid: one row per image; columns are named arrays [N,H,W,3] (images) or [N,H,W] masks;
    each image's prompt (a point or a box) drawn on every column."""
    names = list(columns)
    n = len(next(iter(columns.values())))
    fig, axes = plt.subplots(n, len(names), figsize=(1.8 * len(names), 1.8 * n), squeeze=False)
    for j, name in enumerate(names):
        for i in range(n):
            ax = axes[i, j]
            arr = columns[name][i]
            ax.imshow(
                arr,
                cmap=None if arr.ndim == 3 else "gray",
                vmin=None if arr.ndim == 3 else 0,
                vmax=None if arr.ndim == 3 else 1,
            )
            if prompts.points is not None:
                ax.plot(*prompts.points[i, 0], "r+", ms=8)
            else:
                x0, y0, x1, y1 = prompts.boxes[i]
                ax.plot([x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0], "r-", lw=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
