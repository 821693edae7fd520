"""Box refinement: learn how a site's boxes should move, through FM outputs only.

A site's clinicians draw boxes with their own habits (a loose box is some 10 % too large per
side). The refiner moves each side of the box the FM receives by a fraction of the box's size,
linear in the same few image features the basis decoder uses: 4 x (rank + 1) parameters (16 by
default), zero-initialised, so step 0 sends the drawn box unchanged. Trained by the same SPSA-GC
as the visual prompt, alone (``adapt="box"``) or with it (``adapt="both"``).

Why a box and not only pixels: the MedSAM family min-max normalises each image, so a global
brightness or contrast change is undone by the FM, while the box is what it segments from.
"""

from __future__ import annotations

import numpy as np
import torch

SIDES = 4  # x0, y0, x1, y1: a positive move is inwards


def refine_boxes(
    coef: torch.Tensor, feats: torch.Tensor, boxes: np.ndarray, hw: tuple[int, int]
) -> np.ndarray:
    """coef [T, 4, r+1], image features [B, r+1], pixel boxes [B, 4] -> boxes [T, B, 4].

    Each side moves inwards by (coef . feats) times the box's width (x sides) or height (y
    sides); the result is clipped to the image and kept at least one pixel wide, as the FM
    contract requires."""
    h, w = hw
    move = torch.einsum("tsr,br->tbs", coef.float(), feats).numpy()  # fractions of the size
    b = np.asarray(boxes, np.float64)
    size = np.stack([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]] * 2, axis=1)  # [B, 4]
    sign = np.array([1.0, 1.0, -1.0, -1.0])  # inwards: x0, y0 grow; x1, y1 shrink
    out = b[None] + sign * move * size[None]
    out = np.clip(out, 0, [w, h, w, h])
    out[..., 2] = np.maximum(out[..., 2], np.minimum(out[..., 0] + 1, w))
    out[..., 0] = np.minimum(out[..., 0], out[..., 2] - 1)
    out[..., 3] = np.maximum(out[..., 3], np.minimum(out[..., 1] + 1, h))
    out[..., 1] = np.minimum(out[..., 1], out[..., 3] - 1)
    return out.astype(np.float32)
