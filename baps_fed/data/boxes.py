"""Box prompts drawn from ground-truth masks, as the MedSAM family is trained and used.

A box is pixel ``(x0, y0, x1, y1)``: the mask's extreme foreground pixel indices (the authors'
``get_bbox``), each side then moved outwards, clipped to the image, at least one pixel wide.

- ``tight``: the MedSAM training protocol, each side moved by a random 0..J pixels, J a fraction
  of the image's longest side (0.02: 20 px at MedSAM's 1024 px input, 5 px at LiteMedSAM's 256).
- ``loose``: a clinician's quick box, each side moved outwards by ``margin`` of the box's size
  (its width for x, its height for y) plus a uniform jitter of +-``jitter`` of that size, plus
  a per-side ``bias`` (left, top, right, bottom): one hospital's own habit, e.g. drawing high
  (top +0.2, bottom -0.1) or wide (left and right +0.3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from baps_fed.data.points import EmptyMaskError

BoxProtocol = Literal["tight", "loose"]
BOX_PROTOCOLS: tuple[str, ...] = ("tight", "loose")
BOX_SIDES: tuple[str, ...] = ("left", "top", "right", "bottom")  # the box's (x0, y0, x1, y1)
BoxBias = tuple[float, float, float, float]
NO_BIAS: BoxBias = (0.0, 0.0, 0.0, 0.0)
BIAS_RANGE = (-0.5, 1.0)  # a side may move in by half the box (the opposite side's room)


@dataclass(frozen=True)
class BoxConfig:
    protocol: BoxProtocol = "loose"
    tight_shift: float = 0.02  # tight: max outward move per side, fraction of the longest side
    loose_margin: float = 0.10  # loose: outward move per side, fraction of the box's size
    loose_jitter: float = 0.15  # loose: +- uniform jitter per side, fraction of the box's size
    # loose: added to each side's outward move (left, top, right, bottom), fraction of the box's
    # size, + = outwards: a hospital's own way of drawing (NO_BIAS: none, the boxes unchanged)
    loose_bias: BoxBias = NO_BIAS

    def __post_init__(self) -> None:
        if self.protocol not in BOX_PROTOCOLS:
            raise ValueError(f"unknown box protocol {self.protocol!r}; use tight or loose")
        for name in ("tight_shift", "loose_margin", "loose_jitter"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a fraction in [0, 1], got {getattr(self, name)}")
        object.__setattr__(self, "loose_bias", _checked_bias(self.loose_bias))


def _checked_bias(bias) -> BoxBias:
    """Four floats in BIAS_RANGE, as a tuple (the config stays hashable)."""
    try:  # a string is parse_box_bias's to read, not a sequence of characters
        values = () if isinstance(bias, str) else tuple(float(v) for v in bias)
    except (TypeError, ValueError):
        values = ()
    lo, hi = BIAS_RANGE
    if len(values) != len(BOX_SIDES) or not all(lo <= v <= hi for v in values):
        raise ValueError(
            f"box bias needs one fraction in [{lo:g}, {hi:g}] per side "
            f"({', '.join(BOX_SIDES)}), got {bias!r}"
        )
    return values  # type: ignore[return-value]


def parse_box_bias(text: str) -> BoxBias:
    """A box bias from its one written form, "left,top,right,bottom" (e.g. "0,0.2,0,-0.1": a
    hospital that draws high); "" is no bias."""
    if not text.strip():
        return NO_BIAS
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != len(BOX_SIDES):
        raise ValueError(
            f"box-bias {text!r}: give four fractions of the box's size, "
            '"left,top,right,bottom", + = outwards (e.g. "0,0.2,0,-0.1")'
        )
    return _checked_bias(values)


def mask_box(mask: np.ndarray) -> np.ndarray:
    """The mask's extreme foreground indices (x0, y0, x1, y1), float32."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise EmptyMaskError("cannot draw a box around an empty mask")
    return np.array([cols.min(), rows.min(), cols.max(), rows.max()], dtype=np.float32)


def sample_box(mask: np.ndarray, rng: np.random.Generator, cfg: BoxConfig) -> np.ndarray:
    """One box around ``mask`` [H,W] by ``cfg``'s protocol, inside the image, x0 < x1, y0 < y1."""
    h, w = mask.shape
    x0, y0, x1, y1 = mask_box(mask)
    if cfg.protocol == "tight":
        move = rng.uniform(0, cfg.tight_shift * max(h, w), 4)
    else:
        size = np.array([x1 - x0 + 1, y1 - y0 + 1] * 2, dtype=np.float64)
        jitter = rng.uniform(-cfg.loose_jitter, cfg.loose_jitter, 4)
        # the bias is added last: with NO_BIAS the boxes are bit for bit those without one
        move = (cfg.loose_margin + jitter + np.asarray(cfg.loose_bias)) * size
    box = np.array([x0 - move[0], y0 - move[1], x1 + move[2], y1 + move[3]])
    box = np.clip(box, 0, [w, h, w, h])
    # a jitter that moves a side inwards may cross the opposite one: keep one pixel at least
    box[2] = max(box[2], min(box[0] + 1, w))
    box[0] = min(box[0], box[2] - 1)
    box[3] = max(box[3], min(box[1] + 1, h))
    box[1] = min(box[1], box[3] - 1)
    return box.astype(np.float32)
