"""What every dataset yields: an RGB uint8 image, its binary mask, and a name to report it by."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Sample:
    image: np.ndarray  # uint8 [H, W, 3]
    mask: np.ndarray  # bool [H, W], at least one foreground pixel
    name: str  # file stem (real data) or synthetic id: what errors and reports name
    # its row of the folder's manifest.csv, name column left out (baps_fed/data/manifest.py)
    meta: dict[str, str] = field(default_factory=dict)


class DatasetError(ValueError):
    """A dataset that cannot be used; the message names the folder/file and what to do."""


@dataclass(frozen=True)
class Problem:
    """One input file that was skipped or repaired, and why (reported, never silent)."""

    path: str
    reason: str
    action: str  # "skipped" or what was done to repair it


class SegmentationDataset(Sequence[Sample]):
    """An in-memory list of samples plus the problems met while loading them.

    ``folder``: the data folder it was read from ("" for synthetic data), what messages name.
    ``group_by``: the manifest column whose groups its splits keep whole ("" for none), so that
    whoever splits it (``splits.split_dataset``) honours the grouping its site asked for.
    """

    def __init__(
        self,
        name: str,
        samples: list[Sample],
        problems: list[Problem] | None = None,
        *,
        folder: str = "",
        group_by: str = "",
    ):
        self.name = name
        self.samples = samples
        self.problems = problems or []
        self.folder = folder
        self.group_by = group_by

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return self.derive(self.samples[i])
        return self.samples[i]

    @property
    def where(self) -> str:
        """What messages call it: its folder, else its name."""
        return self.folder or self.name

    def derive(
        self,
        samples: list[Sample],
        name: str | None = None,
        problems: list[Problem] | None = None,
        group_by: str | None = None,
    ) -> SegmentationDataset:
        """A dataset of other samples from the same source (its folder, problems and grouping
        carried along unless given)."""
        return SegmentationDataset(
            name or self.name,
            samples,
            self.problems if problems is None else problems,
            folder=self.folder,
            group_by=self.group_by if group_by is None else group_by,
        )

    def subset(self, indices: Sequence[int], name: str | None = None) -> SegmentationDataset:
        return self.derive([self.samples[i] for i in indices], name)
