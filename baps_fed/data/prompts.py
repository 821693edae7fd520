"""The prompt each image is given: one positive point or one box, drawn from its mask.

``PromptConfig`` names the protocol (``--prompt point|box``, ``--point-mode``,
``--box-protocol``); ``Prompts`` is a batch of them, in the form the FM contract takes.
Evaluation prompts are a function of (seed, sample name) only, so every run and every method
compared gives the same image the same prompt.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from baps_fed.data.boxes import BoxConfig, sample_box
from baps_fed.data.points import PointMode, sample_point

PromptKind = Literal["point", "box"]
PROMPT_KINDS: tuple[str, ...] = ("point", "box")


@dataclass(frozen=True)
class PromptConfig:
    kind: PromptKind = "point"
    point_mode: PointMode = "uniform"
    box: BoxConfig = field(default_factory=BoxConfig)

    def __post_init__(self) -> None:
        if self.kind not in PROMPT_KINDS:
            raise ValueError(f"unknown prompt kind {self.kind!r}; use point or box")

    def describe(self) -> str:
        if self.kind == "point":
            return f"one positive point ({self.point_mode})"
        return f"one {self.box.protocol} box"

    def for_case(self, index: int) -> PromptConfig:
        """The config of training case ``index``: the same for every case of one site."""
        return self


@dataclass(frozen=True)
class PooledPrompting:
    """Prompts of a pool of several sites' training cases, each drawn as its own site draws
    them (a pooled-centralised arm: every hospital's cases with its clinicians' boxes)."""

    configs: tuple[PromptConfig, ...]  # one per case, in the pool's order

    def __post_init__(self) -> None:
        if len({c.kind for c in self.configs}) != 1:
            raise ValueError("a pool's cases must share one prompt kind (all points or all boxes)")

    @property
    def kind(self) -> PromptKind:
        return self.configs[0].kind

    def for_case(self, index: int) -> PromptConfig:
        return self.configs[index]


POINT = PromptConfig()  # the BAPS protocol: one positive point, uniform in the mask


@dataclass(frozen=True)
class Prompts:
    """A batch of prompts: points [B,1,2] pixel (x, y) or boxes [B,4] pixel (x0, y0, x1, y1)."""

    points: np.ndarray | None = None
    boxes: np.ndarray | None = None

    def __post_init__(self) -> None:
        if (self.points is None) == (self.boxes is None):
            raise ValueError("Prompts holds points or boxes, exactly one of them")
        for name in ("points", "boxes"):  # float32, as the FM contract takes them
            if getattr(self, name) is not None:
                object.__setattr__(self, name, np.asarray(getattr(self, name), np.float32))

    @property
    def kind(self) -> PromptKind:
        return "point" if self.points is not None else "box"

    def __len__(self) -> int:
        return len(self.points if self.points is not None else self.boxes)

    def query(self) -> dict[str, np.ndarray]:
        """Keyword arguments of ``BlackboxFM.segment``."""
        return {"points": self.points} if self.points is not None else {"boxes": self.boxes}

    def tile(self, n: int) -> Prompts:
        """The batch repeated n times (the 2K perturbed copies of an SPSA step)."""
        if self.points is not None:
            return Prompts(points=np.tile(self.points, (n, 1, 1)))
        return Prompts(boxes=np.tile(self.boxes, (n, 1)))

    def __getitem__(self, idx: slice | np.ndarray) -> Prompts:
        if self.points is not None:
            return Prompts(points=self.points[idx])
        return Prompts(boxes=self.boxes[idx])

    @staticmethod
    def stack(items: list[np.ndarray], kind: PromptKind) -> Prompts:
        if kind == "point":
            return Prompts(points=np.stack(items).reshape(len(items), 1, 2).astype(np.float32))
        return Prompts(boxes=np.stack(items).reshape(len(items), 4).astype(np.float32))

    @staticmethod
    def empty(kind: PromptKind) -> Prompts:
        if kind == "point":
            return Prompts(points=np.zeros((0, 1, 2), np.float32))
        return Prompts(boxes=np.zeros((0, 4), np.float32))


def sample_prompt(mask: np.ndarray, rng: np.random.Generator, cfg: PromptConfig) -> np.ndarray:
    """One image's prompt: a point (x, y) or a box (x0, y0, x1, y1)."""
    if cfg.kind == "point":
        return sample_point(mask, rng, cfg.point_mode)
    return sample_box(mask, rng, cfg.box)


def sample_prompts(
    masks: np.ndarray,
    idx: np.ndarray,
    rng: np.random.Generator,
    cfg: PromptConfig | PooledPrompting,
) -> Prompts:
    """Prompts for ``masks[idx]``, drawn in order from ``rng``, each as its case's config says."""
    if not len(idx):
        return Prompts.empty(cfg.kind)
    return Prompts.stack(
        [sample_prompt(masks[i], rng, cfg.for_case(int(i))) for i in idx], cfg.kind
    )


def seeded_prompt(mask: np.ndarray, name: str, seed: int, cfg: PromptConfig) -> np.ndarray:
    """The evaluation prompt of one sample: a function of (seed, sample name) only."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    return sample_prompt(mask, rng, cfg)
