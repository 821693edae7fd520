"""Box refinement: learn how a site's boxes should move, through FM outputs only.

A site's clinicians draw boxes with their own habits (a loose box is some 10 % too large per
side). The refiner moves each side of the box the FM receives by a fraction of the box's size:
by default one move per side, the same for every image (``box_refiner="bias"``, 4 parameters),
or linear in the same few image features the basis decoder uses (``"image"``, 4 x (rank + 1)
parameters, 16 at the default rank); zero-initialised, so step 0 sends the drawn box
unchanged. Trained by the same SPSA-GC as the visual prompt, alone (``adapt="box"``) or with
it (``adapt="both"``).

Why a box and not only pixels: the MedSAM family min-max normalises each image, so a global
brightness or contrast change is undone by the FM, while the box is what it segments from.
"""

from __future__ import annotations

import numpy as np
import torch

SIDES = 4  # x0, y0, x1, y1: a positive move is inwards


def refine_boxes_torch(
    coef: torch.Tensor, feats: torch.Tensor, boxes: torch.Tensor, hw: tuple[int, int]
) -> torch.Tensor:
    """coef [T, 4, r+1], image features [B, r+1], pixel boxes [B, 4] -> boxes [T, B, 4] (float64,
    differentiable in coef: the white-box oracle back-propagates through it).

    Each side moves inwards by (coef . feats) times the box's width (x sides) or height (y
    sides); the result is clipped to the image and kept at least one pixel wide, as the FM
    contract requires."""
    h, w = hw
    move = torch.einsum("tsr,br->tbs", coef.double(), feats.double())  # fractions of the size
    b = boxes.double()
    size = torch.stack([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]] * 2, dim=1)  # [B, 4]
    sign = b.new_tensor([1.0, 1.0, -1.0, -1.0])  # inwards: x0, y0 grow; x1, y1 shrink
    out = b[None] + sign * move * size[None]
    x0, y0, x1, y1 = (torch.clamp(out[..., i], 0, lim) for i, lim in enumerate((w, h, w, h)))
    x1 = torch.maximum(x1, torch.clamp(x0 + 1, max=w))
    x0 = torch.minimum(x0, x1 - 1)
    y1 = torch.maximum(y1, torch.clamp(y0 + 1, max=h))
    y0 = torch.minimum(y0, y1 - 1)
    return torch.stack([x0, y0, x1, y1], dim=-1)


def refine_boxes(
    coef: torch.Tensor, feats: torch.Tensor, boxes: np.ndarray, hw: tuple[int, int]
) -> np.ndarray:
    """``refine_boxes_torch`` for the black-box path: float32 pixel boxes [T, B, 4]."""
    with torch.no_grad():
        out = refine_boxes_torch(coef, feats, torch.as_tensor(np.asarray(boxes)), hw)
    return out.numpy().astype(np.float32)
