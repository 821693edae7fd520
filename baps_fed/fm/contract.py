"""The black-box FM contract: what any foundation model must accept and return.

A ``BlackboxFM`` is forward-only: uint8 images and pixel point prompts go in, float32 mask logits
at the input resolution come out. No gradients, weights or embeddings leave it. Every
implementation is metered (calls, images, seconds) and can enforce a query budget.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass

import numpy as np

from baps_fed.fm.errors import FMInputError, QueryBudgetExceeded


@dataclass
class QueryMeter:
    calls: int = 0
    images: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def validate_query(
    images: np.ndarray, points: np.ndarray, labels: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check a query against the contract and return (images, points float32, labels int64).

    The images come back C-contiguous (a flipped or strided view is copied), so implementations
    may wrap them with ``torch.from_numpy``, which refuses negative strides.
    """
    if not isinstance(images, np.ndarray):
        raise FMInputError(
            f"images must be a numpy uint8 array [B,H,W,3], got {type(images).__name__}"
        )
    if images.dtype != np.uint8:
        raise FMInputError(
            f"images must be uint8 (what an API receives), got {images.dtype}; "
            "convert with np.clip(x, 0, 255).astype(np.uint8)"
        )
    if images.ndim != 4 or images.shape[-1] != 3:
        raise FMInputError(
            f"images must have shape [B,H,W,3] (RGB), got {tuple(images.shape)}; "
            "convert grayscale or RGBA images to RGB first"
        )
    b, h, w, _ = images.shape
    if b == 0 or h == 0 or w == 0:
        raise FMInputError(f"empty query: images have shape {tuple(images.shape)}")
    points = np.asarray(points, dtype=np.float32)
    if points.ndim != 3 or points.shape[0] != b or points.shape[2] != 2 or points.shape[1] == 0:
        raise FMInputError(
            f"points must have shape [B,N,2] = [{b},N,2] with N >= 1 (pixel x, y), "
            f"got {tuple(points.shape)}"
        )
    if not np.isfinite(points).all():
        raise FMInputError("points contain NaN or Inf")
    outside = (
        (points[..., 0] < 0) | (points[..., 0] > w) | (points[..., 1] < 0) | (points[..., 1] > h)
    )
    if outside.any():
        i, j = np.argwhere(outside)[0]
        raise FMInputError(
            f"point {j} of image {i} is at (x={points[i, j, 0]:.1f}, y={points[i, j, 1]:.1f}), "
            f"outside the {w}x{h} image; points are pixel (x, y) with 0 <= x <= W, 0 <= y <= H"
        )
    if labels is None:
        labels = np.ones(points.shape[:2], dtype=np.int64)
    labels = np.asarray(labels)
    if labels.shape != points.shape[:2]:
        raise FMInputError(f"labels must have shape [B,N] = {points.shape[:2]}, got {labels.shape}")
    if not np.isin(labels, (0, 1)).all():
        raise FMInputError("labels must be 1 (foreground) or 0 (background)")
    return np.ascontiguousarray(images), np.ascontiguousarray(points), labels.astype(np.int64)


class BlackboxFM(ABC):
    """Forward-only promptable segmentation model behind a metered, budgeted interface."""

    name: str = "fm"

    def __init__(self, budget_images: int | None = None) -> None:
        self.meter = QueryMeter()
        self.budget_images = budget_images

    def segment(
        self, images: np.ndarray, points: np.ndarray, labels: np.ndarray | None = None
    ) -> np.ndarray:
        """Mask logits float32 [B,H,W] for uint8 images [B,H,W,3] and points [B,N,2] (x, y)."""
        images, points, labels = validate_query(images, points, labels)
        b = images.shape[0]
        if self.budget_images is not None and self.meter.images + b > self.budget_images:
            raise QueryBudgetExceeded(
                f"{self.name}: query budget of {self.budget_images} images reached "
                f"({self.meter.images} used, this call asks for {b}); raise the budget or stop"
            )
        start = time.perf_counter()
        logits = self._segment(images, points, labels)
        self.meter.seconds += time.perf_counter() - start
        self.meter.calls += 1
        self.meter.images += b
        if logits.shape != images.shape[:3]:
            raise RuntimeError(
                f"{self.name} returned logits of shape {logits.shape}, expected {images.shape[:3]}"
            )
        return logits.astype(np.float32, copy=False)

    @abstractmethod
    def _segment(self, images: np.ndarray, points: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Implementations receive validated inputs and return logits [B,H,W]."""
