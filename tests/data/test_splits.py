"""Name-hashed train/val/test splits: deterministic, stable under growth, safe for tiny sets."""

from __future__ import annotations

import numpy as np
import pytest

from baps_fed.data.sample import Problem, Sample, SegmentationDataset
from baps_fed.data.splits import split_dataset

_IMAGE = np.zeros((1, 1, 3), np.uint8)
_MASK = np.ones((1, 1), bool)


def dataset(names: list[str], name: str = "ds") -> SegmentationDataset:
    return SegmentationDataset(name, [Sample(_IMAGE, _MASK, n) for n in names])


def split_names(ds: SegmentationDataset, **kw) -> dict[str, list[str]]:
    return {k: [s.name for s in v] for k, v in split_dataset(ds, **kw).items()}


def assignment(ds: SegmentationDataset, **kw) -> dict[str, str]:
    return {name: split for split, names in split_names(ds, **kw).items() for name in names}


NAMES = [f"case_{i:04d}" for i in range(1000)]


def test_deterministic_and_independent_of_order():
    first = assignment(dataset(NAMES))
    assert first == assignment(dataset(NAMES))
    assert first == assignment(dataset(NAMES[::-1]))
    assert sorted(first) == sorted(NAMES)  # every sample in exactly one split


def test_fractions_roughly_respected():
    sizes = {k: len(v) for k, v in split_names(dataset(NAMES)).items()}
    assert sum(sizes.values()) == 1000
    assert abs(sizes["train"] - 700) < 50
    assert abs(sizes["val"] - 100) < 30
    assert abs(sizes["test"] - 200) < 40


def test_adding_samples_moves_nothing():
    before = assignment(dataset(NAMES[:600]))
    after = assignment(dataset(NAMES))
    assert all(after[name] == split for name, split in before.items())


def test_salt_changes_the_split():
    assert assignment(dataset(NAMES)) != assignment(dataset(NAMES), salt="other")


def test_split_datasets_keep_order_name_and_problems():
    problem = Problem("x.png", "corrupt", "skipped")
    ds = SegmentationDataset("kvasir", [Sample(_IMAGE, _MASK, n) for n in NAMES[:50]], [problem])
    parts = split_dataset(ds)
    assert set(parts) == {"train", "val", "test"}
    for key, part in parts.items():
        assert part.name == f"kvasir/{key}" and part.problems == [problem]
        names = [s.name for s in part]
        assert names == sorted(names)


@pytest.mark.parametrize("n", [3, 4, 5, 7, 10])
def test_tiny_datasets_fill_every_split(n):
    for salt in ("baps-fed", "a", "b", "c"):
        names = split_names(dataset([f"img{i}" for i in range(n)]), salt=salt)
        assert all(names[k] for k in ("train", "val", "test")), (n, salt, names)
        assert sum(map(len, names.values())) == n
        assert names == split_names(dataset([f"img{i}" for i in range(n)]), salt=salt)


def test_three_samples_give_one_each():
    names = split_names(dataset(["a", "b", "c"]))
    assert sorted(len(v) for v in names.values()) == [1, 1, 1]


def test_zero_fraction_split_stays_empty():
    names = split_names(dataset([f"img{i}" for i in range(4)]), fractions=(0.8, 0.2, 0.0))
    assert names["test"] == [] and names["train"] and names["val"]
    names = split_names(dataset(NAMES[:200]), fractions=(1.0, 0.0, 0.0))
    assert len(names["train"]) == 200 and not names["val"] and not names["test"]


def test_fewer_samples_than_splits_still_split():
    names = split_names(dataset(["only"]))
    assert sum(map(len, names.values())) == 1
    assert split_names(dataset([])) == {"train": [], "val": [], "test": []}


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.7, 0.2, 0.2), (1.2, -0.1, -0.1)])
def test_bad_fractions_rejected(fractions):
    with pytest.raises(ValueError, match="fractions"):
        split_dataset(dataset(["a", "b", "c"]), fractions=fractions)
