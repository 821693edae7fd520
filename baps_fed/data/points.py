"""Point prompts drawn from ground-truth masks, as in the BAPS protocol (one positive point)."""

from __future__ import annotations

from typing import Literal

import numpy as np

PointMode = Literal["uniform", "centroid"]


class EmptyMaskError(ValueError):
    """A point was asked for on a mask with no foreground."""


def sample_point(
    mask: np.ndarray, rng: np.random.Generator, mode: PointMode = "uniform"
) -> np.ndarray:
    """One positive point (x, y) in pixel indices, as segment-anything expects them.

    ``uniform``: a foreground pixel drawn uniformly (the paper's protocol, here seeded).
    ``centroid``: the mask's centroid, moved to the nearest foreground pixel when the centroid
    falls outside a non-convex mask.
    """
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise EmptyMaskError("cannot place a positive point on an empty mask")
    if mode == "uniform":
        i = rng.integers(rows.size)
        return np.array([cols[i], rows[i]], dtype=np.float32)
    if mode == "centroid":
        r, c = rows.mean(), cols.mean()
        ri, ci = int(round(r)), int(round(c))
        if not mask[min(ri, mask.shape[0] - 1), min(ci, mask.shape[1] - 1)]:
            i = np.argmin((rows - r) ** 2 + (cols - c) ** 2)
            ri, ci = rows[i], cols[i]
        return np.array([ci, ri], dtype=np.float32)
    raise ValueError(f"unknown point mode {mode!r}; use 'uniform' or 'centroid'")


def sample_points(
    masks: np.ndarray, rng: np.random.Generator, mode: PointMode = "uniform"
) -> np.ndarray:
    """One point per mask: masks [B,H,W] -> points [B,1,2]."""
    return np.stack([sample_point(m, rng, mode) for m in masks])[:, None, :]
