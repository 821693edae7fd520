"""Train/val/test splits that depend only on sample names, so they survive dataset growth.

A sample's split is decided by ``sha256(salt + "\\0" + name)`` mapped to [0, 1) and cut at the
cumulative fractions: no random state, no dependence on order or on the other samples, so adding
files never moves an existing sample to another split (and test images never leak into train).
Grouped splits (``group_by``, a manifest column such as ``sequence``) hash the group's value
instead of the name, so a group (one patient's near-duplicate frames) lies whole in one split,
with the same guarantees.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from baps_fed.data.manifest import group_values, warn_ungrouped
from baps_fed.data.sample import DatasetError, SegmentationDataset

SPLITS = ("train", "val", "test")


def name_position(name: str, salt: str) -> float:
    """Where ``name`` falls in [0, 1): the first 8 bytes of its salted SHA-256, as a fraction."""
    digest = hashlib.sha256(f"{salt}\0{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    if len(fractions) != len(SPLITS) or any(not f >= 0 for f in fractions):
        raise ValueError(
            f"fractions must be three non-negative numbers for {SPLITS}, got {tuple(fractions)}"
        )
    total = sum(fractions)
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions must sum to 1, got {tuple(fractions)} (sum {total:g})")
    return tuple(f / total for f in fractions)


def _split_of(position: float, fractions: tuple[float, ...]) -> int:
    """The split whose interval of [0, 1) holds ``position``; splits with fraction 0 get none."""
    upper = 0.0
    last = max(i for i, f in enumerate(fractions) if f > 0)
    for i, f in enumerate(fractions):
        upper += f
        if f > 0 and (position < upper or i == last):
            return i
    return last


def _distance(position: float, fractions: tuple[float, ...], split: int) -> float:
    lower = sum(fractions[:split])
    upper = lower + fractions[split]
    return max(lower - position, position - upper, 0.0)


def _fill_empty_splits(
    assigned: list[int], positions: list[float], names: list[str], fractions: tuple[float, ...]
) -> None:
    """Give each empty split with a nonzero fraction one key (a sample name or a group), in place.

    For each such split (in train, val, test order), the key whose hash position lies nearest
    its interval (ties: smallest key) is moved there from a split that keeps at least one key.
    With at least as many keys as nonzero splits, such a donor always exists.
    This only matters for tiny datasets; keys moved this way may move back once the dataset
    grows and hashing fills the split.
    """
    for split, fraction in enumerate(fractions):
        if fraction == 0 or split in assigned:
            continue
        counts = [assigned.count(s) for s in range(len(fractions))]
        donors = [i for i, s in enumerate(assigned) if counts[s] > 1]
        best = min(donors, key=lambda i: (_distance(positions[i], fractions, split), names[i]))
        assigned[best] = split


def _too_few_groups(
    ds: SegmentationDataset, column: str, groups: list[str], fractions: tuple[float, ...]
) -> DatasetError:
    needed = sum(f > 0 for f in fractions)
    return DatasetError(
        f"{ds.where}: {len(groups)} {column!r} groups ({', '.join(groups)}) cannot fill the "
        f"{needed} splits with a nonzero fraction {dict(zip(SPLITS, fractions, strict=True))} "
        f"while keeping each {column} whole: use data with at least {needed} {column}s, or set "
        "the fraction of a split you do not need to 0"
    )


def split_dataset(
    ds: SegmentationDataset,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    salt: str = "baps-fed",
    group_by: str | None = None,
) -> dict[str, SegmentationDataset]:
    """``{"train", "val", "test"}`` subsets of ``ds``, each named ``<ds.name>/<split>``.

    Deterministic and stable: a sample's split depends only on ``salt`` and its name (see the
    module docstring); change ``salt`` for a different but equally stable split. Samples keep
    their order within each split, and the problems of ``ds`` are carried along.

    ``group_by``: a manifest column (``Sample.meta``) whose groups stay whole, each split by its
    value's hash; every sample needs a value. None: the grouping the dataset was opened with
    (``ds.group_by``, see ``manifest.restrict``); "": by sample name, with a warning when the
    manifest has a group-like column (``manifest.GROUP_COLUMNS``).

    Tiny datasets: when there are at least as many keys (distinct names, or groups) as nonzero
    fractions, every split with a nonzero fraction gets at least one key; hashing alone may leave
    one empty, and then the key hashed nearest to it is moved in (see ``_fill_empty_splits``).
    With fewer names hashing alone decides; fewer groups are an error, since a split would be
    left empty.
    """
    fracs = _check_fractions(fractions)
    column = ds.group_by if group_by is None else group_by
    if column:
        keys = group_values(ds, column)
    else:
        warn_ungrouped(ds)
        keys = [sample.name for sample in ds]
    unique = sorted(set(keys))  # samples sharing a name (or group) share their split
    positions = [name_position(k, salt) for k in unique]
    assigned = [_split_of(p, fracs) for p in positions]
    if len(unique) >= sum(f > 0 for f in fracs):
        _fill_empty_splits(assigned, positions, unique, fracs)
    elif column:
        raise _too_few_groups(ds, column, unique, fracs)
    split_of = dict(zip(unique, assigned, strict=True))
    return {
        split: ds.subset(
            [i for i, key in enumerate(keys) if split_of[key] == k], f"{ds.name}/{split}"
        )
        for k, split in enumerate(SPLITS)
    }
