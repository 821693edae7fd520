"""A folder's manifest.csv: each sample gets its row, bad manifests say what to fix, and a subset
by a manifest column picks exactly the rows it names."""

from __future__ import annotations

import pytest

from baps_fed.data.manifest import Subset, restrict
from baps_fed.data.readers import open_dataset
from baps_fed.data.sample import DatasetError
from baps_fed.data.sources import open_source
from tests.data.site_folders import write_manifest, write_pair, write_site


def test_each_sample_gets_its_manifest_row(tmp_path):
    ds = open_dataset(write_site(tmp_path / "site", sequences=2, frames=2))
    assert ds.folder == str(tmp_path / "site")
    assert {s.name: s.meta for s in ds} == {
        "s1_f0": {"frame": "0", "sequence": "1", "quality": "good"},
        "s1_f1": {"frame": "1", "sequence": "1", "quality": "good"},
        "s2_f0": {"frame": "0", "sequence": "2", "quality": "poor"},
        "s2_f1": {"frame": "1", "sequence": "2", "quality": "poor"},
    }
    assert not ds.problems


def test_the_row_survives_letterboxing_and_a_folder_without_manifest_has_none(tmp_path):
    ds = open_dataset(write_site(tmp_path / "site", sequences=1, frames=1), size=16)
    assert ds[0].image.shape == (16, 16, 3) and ds[0].meta["sequence"] == "1"
    write_pair(tmp_path / "bare", "a")
    assert open_dataset(tmp_path / "bare")[0].meta == {}


def test_a_row_naming_no_file_is_a_problem_and_strict_makes_it_an_error(tmp_path):
    root = tmp_path / "site"
    write_pair(root, "a")
    write_pair(root, "b")
    path = write_manifest(root, "name,sequence\na,1\nb,1\nghost,2\n")
    ds = open_dataset(root)
    (problem,) = ds.problems
    assert str(path) in problem.path and "'ghost'" in problem.path
    assert "names no sample" in problem.reason and "remove the row" in problem.reason
    with pytest.raises(DatasetError, match="ghost.*remove the row"):
        open_dataset(root, strict=True)


def test_a_sample_the_manifest_does_not_list_is_kept_and_reported(tmp_path):
    root = tmp_path / "site"
    write_pair(root, "a")
    write_pair(root, "b")
    write_manifest(root, "name,sequence\na,1\n")
    ds = open_dataset(root, strict=True)  # a repair-like note: kept, never raised
    assert [s.meta for s in ds] == [{"sequence": "1"}, {}]
    (problem,) = ds.problems
    assert "'b' is not listed in" in problem.reason
    assert problem.action == "kept without manifest values"
    # grouping it is impossible: it belongs to no sequence
    with pytest.raises(DatasetError, match=r"1 samples have no 'sequence' value.*\bb\b"):
        restrict(ds, group_by="sequence")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "it is empty"),
        ("file,sequence\na,1\n", "has no 'name' column"),
        ("name,sequence,sequence\na,1,2\n", "repeats or leaves out column names"),
        ("name,sequence\na,1,extra\n", "line 2 has 3 fields, the header 2"),
        ("name,sequence\na,1\na,2\n", "line 3 names 'a' again \\(first on line 2\\)"),
        ("name,sequence\n,1\n", "line 2 has an empty 'name'"),
    ],
)
def test_a_bad_manifest_names_the_file_and_what_to_fix(tmp_path, text, message):
    root = tmp_path / "site"
    write_pair(root, "a")
    path = write_manifest(root, text)
    with pytest.raises(DatasetError, match=message) as err:
        open_dataset(root)
    assert str(path) in str(err.value) and "remove it" in str(err.value)


def test_a_subset_picks_exactly_the_rows_it_names(tmp_path):
    root = write_site(tmp_path / "site", sequences=6, frames=2)
    ds = open_source(str(root), subset="sequence=1,3,4")
    assert sorted({s.meta["sequence"] for s in ds}) == ["1", "3", "4"]
    assert len(ds) == 6 and ds.name == "site[sequence=1,3,4]"
    both = open_source(str(root), subset=" quality = good ; sequence = 1,2,3 ")
    assert [s.name for s in both] == ["s1_f0", "s1_f1", "s3_f0", "s3_f1"]
    assert len(open_source(str(root), subset="")) == 12


def test_subset_syntax_is_parsed_in_one_place():
    assert Subset.parse("") == Subset()
    parsed = Subset.parse("sequence=1,2;quality=good")
    assert parsed.conditions == (("sequence", ("1", "2")), ("quality", ("good",)))
    assert str(parsed) == "sequence=1,2;quality=good"
    for bad in ("sequence", "=1", "sequence=", "sequence=1,,2", "a=1;", "a=1;a=2"):
        with pytest.raises(ValueError, match="subset"):
            Subset.parse(bad)


@pytest.mark.parametrize(
    ("subset", "message"),
    [
        ("patient=1", r"no 'patient' column \(columns: frame, quality, sequence\)"),
        ("sequence=2,9", r"no sample has sequence = 9; the 'sequence' values present are: 1, 2, 3"),
        ("quality=good;sequence=2", "matches no sample"),
    ],
)
def test_a_subset_that_matches_nothing_names_the_folder_column_and_values(
    tmp_path, subset, message
):
    root = write_site(tmp_path / "site", sequences=3, frames=1)
    with pytest.raises(DatasetError, match=message) as err:
        open_source(str(root), subset=subset)
    assert str(root) in str(err.value)


def test_subset_and_group_by_need_a_manifest(tmp_path):
    write_pair(tmp_path / "bare", "a")
    with pytest.raises(DatasetError, match="there is no .*bare/manifest.csv"):
        open_source(str(tmp_path / "bare"), subset="sequence=1")
    with pytest.raises(DatasetError, match="synthetic data has none"):
        open_source("fundus", n=3, group_by="sequence")
