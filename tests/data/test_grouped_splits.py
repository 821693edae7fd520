"""Grouped splits: every group (one patient's or one video's frames) whole in one split, stable as
the data grows; a group-like manifest column split without grouping warns once."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from baps_fed.data.manifest import GROUP_COLUMNS
from baps_fed.data.sample import DatasetError, Sample, SegmentationDataset
from baps_fed.data.sources import open_source
from baps_fed.data.splits import SPLITS, split_dataset
from tests.data.site_folders import write_site

_IMAGE = np.zeros((1, 1, 3), np.uint8)
_MASK = np.ones((1, 1), bool)
CVC = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "cvc-colondb"


def grouped(n_groups: int, per_group: int = 4, name: str = "grouped") -> SegmentationDataset:
    samples = [
        Sample(_IMAGE, _MASK, f"p{g:03d}_{i}", {"patient": f"p{g:03d}"})
        for g in range(n_groups)
        for i in range(per_group)
    ]
    return SegmentationDataset(name, samples)


def split_of_groups(parts: dict[str, SegmentationDataset], column: str) -> dict[str, set[str]]:
    return {k: {s.meta[column] for s in v} for k, v in parts.items()}


def assert_no_group_straddles(parts: dict[str, SegmentationDataset], column: str) -> None:
    groups = split_of_groups(parts, column)
    for a in SPLITS:
        for b in SPLITS:
            assert a == b or not groups[a] & groups[b], (a, b, groups[a] & groups[b])


def test_a_grouped_split_never_puts_one_group_in_two_splits():
    ds = grouped(200)
    parts = split_dataset(ds, group_by="patient")
    assert_no_group_straddles(parts, "patient")
    assert sum(len(p) for p in parts.values()) == len(ds)
    counts = {k: len(v) for k, v in split_of_groups(parts, "patient").items()}
    assert abs(counts["train"] - 140) < 20 and abs(counts["test"] - 40) < 15  # by group
    # the sample-name split of the same data would put patients in several splits
    by_name = split_dataset(ds, group_by="")
    groups = split_of_groups(by_name, "patient")
    assert groups["train"] & groups["test"]


def test_a_grouped_split_is_stable_as_groups_and_frames_are_added():
    before = split_dataset(grouped(60, per_group=2), group_by="patient")
    after = split_dataset(grouped(120, per_group=5), group_by="patient")  # more of both
    old = {g: k for k, gs in split_of_groups(before, "patient").items() for g in gs}
    new = {g: k for k, gs in split_of_groups(after, "patient").items() for g in gs}
    assert all(new[g] == split for g, split in old.items())


def test_the_dataset_carries_its_grouping_and_salt_changes_it(tmp_path):
    root = write_site(tmp_path / "site", sequences=9, frames=2)
    ds = open_source(str(root), group_by="sequence")
    assert ds.group_by == "sequence"
    parts = split_dataset(ds)  # as `baps-fed train` splits it: no group_by argument
    assert_no_group_straddles(parts, "sequence")
    assert all(p.group_by == "sequence" for p in parts.values())
    salted = split_dataset(ds, salt="other")
    assert split_of_groups(salted, "sequence") != split_of_groups(parts, "sequence")


def test_few_groups_fill_every_split_and_too_few_are_an_error():
    parts = split_dataset(grouped(3, per_group=5), group_by="patient")
    assert [len(split_of_groups(parts, "patient")[k]) for k in SPLITS] == [1, 1, 1]
    with pytest.raises(DatasetError, match=r"2 'patient' groups \(p000, p001\) cannot fill the 3"):
        split_dataset(grouped(2), group_by="patient")
    two = split_dataset(grouped(2), fractions=(0.8, 0.0, 0.2), group_by="patient")
    assert len(two["val"]) == 0 and len(two["train"]) == len(two["test"]) == 4


def test_group_by_an_unknown_column_or_without_manifest_is_an_error():
    with pytest.raises(DatasetError, match=r"no 'sequence' column \(columns: patient\)"):
        split_dataset(grouped(5), group_by="sequence")
    bare = SegmentationDataset("bare", [Sample(_IMAGE, _MASK, "a")])
    with pytest.raises(DatasetError, match="needs a manifest.csv"):
        split_dataset(bare, group_by="sequence")


def test_a_group_like_column_split_by_sample_warns_once(caplog):
    ds = grouped(10, name="warn-once")
    with caplog.at_level(logging.WARNING, logger="baps_fed.data.manifest"):
        split_dataset(ds)
        split_dataset(ds)
    (record,) = caplog.records
    message = record.getMessage()
    assert "warn-once" in message and "'patient' column" in message
    assert 'group-by = "patient"' in message and "--group-by patient" in message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="baps_fed.data.manifest"):
        split_dataset(grouped(10, name="grouped-quietly"), group_by="patient")
        quality = [Sample(_IMAGE, _MASK, f"x{i}", {"quality": "good"}) for i in range(5)]
        split_dataset(SegmentationDataset("no-group-column", quality))
    assert not caplog.records
    assert "patient" in GROUP_COLUMNS and "sequence" in GROUP_COLUMNS


def test_the_warning_names_the_folder(tmp_path, caplog):
    root = write_site(tmp_path / "site", sequences=4, frames=1)
    with caplog.at_level(logging.WARNING, logger="baps_fed.data.manifest"):
        split_dataset(open_source(str(root)))
    assert any(
        str(root) in r.getMessage() and "'sequence'" in r.getMessage() for r in caplog.records
    )


@pytest.fixture(scope="module")
def cvc() -> SegmentationDataset:
    if not (CVC / "manifest.csv").is_file():
        pytest.skip(
            f"CVC-ColonDB is not at {CVC.resolve()} (shared development data; see its README)"
        )
    return open_source(str(CVC), size=16, group_by="sequence")  # small: only names matter here


def test_cvc_colondb_grouped_split_keeps_every_sequence_whole(cvc, record_property):
    assert len(cvc) == 380 and len({s.meta["sequence"] for s in cvc}) == 15
    parts = split_dataset(cvc)
    assert_no_group_straddles(parts, "sequence")
    sizes = {
        k: (len(v), sorted(split_of_groups(parts, "sequence")[k], key=int))
        for k, v in parts.items()
    }
    record_property("cvc_colondb_grouped_split", sizes)
    print(f"CVC-ColonDB grouped by sequence: {sizes}")
    assert sum(n for n, _ in sizes.values()) == 380 and all(n > 0 for n, _ in sizes.values())


def test_cvc_colondb_as_three_hospitals_of_whole_sequences(cvc, record_property):
    hospitals = {"a": "1,2,3,4,5", "b": "6,7,8,9,10", "c": "11,12,13,14,15"}
    seen: dict[str, str] = {}
    for hospital, sequences in hospitals.items():
        site = open_source(str(CVC), size=16, subset=f"sequence={sequences}", group_by="sequence")
        parts = split_dataset(site)
        assert_no_group_straddles(parts, "sequence")
        for s in site:
            assert seen.setdefault(s.name, hospital) == hospital  # no frame in two hospitals
        sizes = {k: len(v) for k, v in parts.items()}
        record_property(f"cvc_colondb_hospital_{hospital}", sizes)
        print(f"hospital-{hospital} (sequences {sequences}): {sizes}")
    assert len(seen) == 380
