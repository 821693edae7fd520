"""What every dataset yields: an RGB uint8 image, its binary mask, and a name to report it by."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sample:
    image: np.ndarray  # uint8 [H, W, 3]
    mask: np.ndarray  # bool [H, W], at least one foreground pixel
    name: str  # file stem (real data) or synthetic id: what errors and reports name


class DatasetError(ValueError):
    """A dataset that cannot be used; the message names the folder/file and what to do."""


@dataclass(frozen=True)
class Problem:
    """One input file that was skipped or repaired, and why (reported, never silent)."""

    path: str
    reason: str
    action: str  # "skipped" or what was done to repair it


class SegmentationDataset(Sequence[Sample]):
    """An in-memory list of samples plus the problems met while loading them."""

    def __init__(self, name: str, samples: list[Sample], problems: list[Problem] | None = None):
        self.name = name
        self.samples = samples
        self.problems = problems or []

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return SegmentationDataset(self.name, self.samples[i], self.problems)
        return self.samples[i]

    def subset(self, indices: Sequence[int], name: str | None = None) -> SegmentationDataset:
        return SegmentationDataset(
            name or self.name, [self.samples[i] for i in indices], self.problems
        )
