"""The black-box FM contract: what any foundation model must accept and return.

A ``BlackboxFM`` is forward-only: uint8 images and pixel prompts go in, float32 mask logits at
the input resolution come out. No gradients, weights or embeddings leave it. Every
implementation is metered (calls, images, seconds) and can enforce a query budget.

A prompt is points (``[B,N,2]`` pixel ``(x, y)`` with labels 1/0) and/or one box per image
(``[B,4]`` pixel ``(x0, y0, x1, y1)``), both at the resolution of the images sent. Each FM says
which kinds it accepts (``prompt_kinds``); a kind it does not accept is refused, never dropped.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

from baps_fed.fm.errors import FMInputError, QueryBudgetExceeded

PROMPT_KINDS = ("point", "box")


@dataclass
class QueryMeter:
    calls: int = 0
    images: int = 0
    seconds: float = 0.0
    # images answered from an embedding cache / encoded anew (0 and 0 for an FM without one)
    cache_hits: int = 0
    cache_misses: int = 0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Query:
    """A validated query: C-contiguous uint8 images and the prompts that came with them."""

    images: np.ndarray  # uint8 [B,H,W,3]
    points: np.ndarray | None  # float32 [B,N,2]
    labels: np.ndarray | None  # int64 [B,N]
    boxes: np.ndarray | None  # float32 [B,4]
    # whose embedding cache each image may use: one scope per image (a tenant of the FM
    # service), or None for the caller's own process
    scopes: tuple[str, ...] | None = None

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k, v in (("point", self.points), ("box", self.boxes)) if v is not None)


def _check_images(images: np.ndarray) -> np.ndarray:
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
    # C-contiguous (a flipped or strided view is copied): implementations may wrap them with
    # torch.from_numpy, which refuses negative strides
    return np.ascontiguousarray(images)


def _check_points(
    points: np.ndarray, labels: np.ndarray | None, b: int, h: int, w: int
) -> tuple[np.ndarray, np.ndarray]:
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
    return np.ascontiguousarray(points), labels.astype(np.int64)


def check_boxes(boxes: np.ndarray, b: int, h: int, w: int) -> np.ndarray:
    """Boxes [B,4] pixel (x0, y0, x1, y1) inside a W x H image, x0 < x1 and y0 < y1."""
    boxes = np.asarray(boxes, dtype=np.float32)
    if boxes.ndim == 3 and boxes.shape[1] == 1:  # [B,1,4], as segment-anything takes them
        boxes = boxes[:, 0]
    if boxes.shape != (b, 4):
        raise FMInputError(
            f"boxes must have shape [B,4] = [{b},4], one pixel (x0, y0, x1, y1) per image, "
            f"got {tuple(boxes.shape)}"
        )
    if not np.isfinite(boxes).all():
        i = int(np.argwhere(~np.isfinite(boxes))[0, 0])
        raise FMInputError(f"box of image {i} contains NaN or Inf: {boxes[i].tolist()}")
    x0, y0, x1, y1 = boxes.T
    inverted = (x1 <= x0) | (y1 <= y0)
    if inverted.any():
        i = int(np.argmax(inverted))
        raise FMInputError(
            f"box of image {i} is inverted or empty: {boxes[i].tolist()}; boxes are "
            "(x0, y0, x1, y1) with x0 < x1 and y0 < y1"
        )
    outside = (x0 < 0) | (y0 < 0) | (x1 > w) | (y1 > h)
    if outside.any():
        i = int(np.argmax(outside))
        raise FMInputError(
            f"box of image {i} {boxes[i].tolist()} leaves the {w}x{h} image; clip it to "
            "0 <= x <= W, 0 <= y <= H"
        )
    return np.ascontiguousarray(boxes)


def validate_query(
    images: np.ndarray,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
) -> Query:
    """Check a query against the contract (shapes, dtypes, finite prompts inside the image)."""
    images = _check_images(images)
    b, h, w, _ = images.shape
    if points is None and boxes is None:
        raise FMInputError("a query needs a prompt: points [B,N,2] and/or boxes [B,4]")
    if points is None and labels is not None:
        raise FMInputError("labels were given without points")
    p = lab = None
    if points is not None:
        p, lab = _check_points(points, labels, b, h, w)
    bx = check_boxes(boxes, b, h, w) if boxes is not None else None
    return Query(images, p, lab, bx)


def unsupported_prompt_message(
    name: str, kind: str, accepted: frozenset[str], why: str = ""
) -> str:
    hint = {
        "point": "send boxes instead (--prompt box)",
        "box": "send points instead (--prompt point)",
    }[kind]
    kinds = ", ".join(sorted(accepted))
    why = f" ({why})" if why else ""
    return f"{name} does not accept {kind} prompts{why}; it accepts: {kinds}; {hint}"


class BlackboxFM(ABC):
    """Forward-only promptable segmentation model behind a metered, budgeted interface."""

    name: str = "fm"
    prompt_kinds: frozenset[str] = frozenset({"point"})
    prompt_note: str = ""  # why a kind is not accepted, for the refusal

    def require_prompt(self, kind: str) -> None:
        """Refuse, before any query is spent, a prompt kind this FM does not accept."""
        if kind not in self.prompt_kinds:
            raise FMInputError(
                unsupported_prompt_message(self.name, kind, self.prompt_kinds, self.prompt_note)
            )

    def __init__(self, budget_images: int | None = None) -> None:
        self.meter = QueryMeter()
        self.budget_images = budget_images

    def usage(self) -> dict[str, float]:
        """What the FM has done so far, for run reports: the meter's counts (an FM with an
        embedding cache adds its memory)."""
        return self.meter.as_dict()

    def segment(
        self,
        images: np.ndarray,
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        *,
        scopes: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Mask logits float32 [B,H,W] for uint8 images [B,H,W,3], points [B,N,2] (x, y) and/or
        boxes [B,4] (x0, y0, x1, y1). ``scopes``: one cache scope per image (an FM service
        keeps each tenant's embeddings apart); an FM without a cache ignores them."""
        query = validate_query(images, points, labels, boxes)
        if scopes is not None:
            if len(scopes) != query.images.shape[0]:
                raise FMInputError(
                    f"scopes must name one cache scope per image: {len(scopes)} for "
                    f"{query.images.shape[0]} images"
                )
            query = replace(query, scopes=tuple(scopes))
        for kind in query.kinds:
            self.require_prompt(kind)
        b = query.images.shape[0]
        if self.budget_images is not None and self.meter.images + b > self.budget_images:
            raise QueryBudgetExceeded(
                f"{self.name}: query budget of {self.budget_images} images reached "
                f"({self.meter.images} used, this call asks for {b}); raise the budget or stop"
            )
        start = time.perf_counter()
        logits = self._segment(query)
        self.meter.seconds += time.perf_counter() - start
        self.meter.calls += 1
        self.meter.images += b
        if logits.shape != query.images.shape[:3]:
            raise RuntimeError(
                f"{self.name} returned logits of shape {logits.shape}, "
                f"expected {query.images.shape[:3]}"
            )
        return logits.astype(np.float32, copy=False)

    @abstractmethod
    def _segment(self, query: Query) -> np.ndarray:
        """Implementations receive a validated query and return logits [B,H,W]."""
