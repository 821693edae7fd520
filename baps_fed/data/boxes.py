"""Box prompts drawn from ground-truth masks, as the MedSAM family is trained and used.

A box is pixel ``(x0, y0, x1, y1)``: the mask's extreme foreground pixel indices (the authors'
``get_bbox``), each side then moved outwards, clipped to the image, at least one pixel wide.

- ``tight``: the MedSAM training protocol, each side moved by a random 0..J pixels, J a fraction
  of the image's longest side (0.02: 20 px at MedSAM's 1024 px input, 5 px at LiteMedSAM's 256).
- ``loose``: a clinician's quick box, each side moved outwards by ``margin`` of the box's size
  (its width for x, its height for y) plus a uniform jitter of +-``jitter`` of that size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from baps_fed.data.points import EmptyMaskError

BoxProtocol = Literal["tight", "loose"]
BOX_PROTOCOLS: tuple[str, ...] = ("tight", "loose")


@dataclass(frozen=True)
class BoxConfig:
    protocol: BoxProtocol = "loose"
    tight_shift: float = 0.02  # tight: max outward move per side, fraction of the longest side
    loose_margin: float = 0.10  # loose: outward move per side, fraction of the box's size
    loose_jitter: float = 0.15  # loose: +- uniform jitter per side, fraction of the box's size

    def __post_init__(self) -> None:
        if self.protocol not in BOX_PROTOCOLS:
            raise ValueError(f"unknown box protocol {self.protocol!r}; use tight or loose")
        for name in ("tight_shift", "loose_margin", "loose_jitter"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a fraction in [0, 1], got {getattr(self, name)}")


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
        move = (cfg.loose_margin + rng.uniform(-cfg.loose_jitter, cfg.loose_jitter, 4)) * size
    box = np.array([x0 - move[0], y0 - move[1], x1 + move[2], y1 + move[3]])
    box = np.clip(box, 0, [w, h, w, h])
    # a jitter that moves a side inwards may cross the opposite one: keep one pixel at least
    box[2] = max(box[2], min(box[0] + 1, w))
    box[0] = min(box[0], box[2] - 1)
    box[3] = max(box[3], min(box[1] + 1, h))
    box[1] = min(box[1], box[3] - 1)
    return box.astype(np.float32)
