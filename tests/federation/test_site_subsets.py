"""A site made of part of a real folder: subset and group-by travel from a scenario, a node config
or the command line to the site's own splits, and a bad one fails with the config."""

from __future__ import annotations

import pytest

from baps_fed.cli import main
from baps_fed.data.sources import open_source
from baps_fed.federation.contract import SiteSpec, spec_from_flat
from baps_fed.federation.local_site import site_splits
from baps_fed.federation.scenario import Scenario
from tests.data.site_folders import write_site

SCENARIO = """
rounds = 2

[[site]]
name = "hospital-a"
data = "{root}"
subset = "sequence=1,2,3"
group-by = "sequence"

[[site]]
name = "hospital-b"
data = "{root}"
subset = "sequence=4,5,6"
group-by = "sequence"
"""


def test_a_node_config_carries_subset_and_group_by():
    spec = spec_from_flat({"data": "/d", "subset": "sequence=1,2", "group-by": "sequence"}, "a")
    assert (spec.subset, spec.group_by) == ("sequence=1,2", "sequence")
    with pytest.raises(ValueError, match="subset 'sequence': cannot read"):
        spec_from_flat({"data": "/d", "subset": "sequence"}, "a")


def test_scenario_sites_are_whole_sequences_of_one_folder(tmp_path):
    root = write_site(tmp_path / "cvc", sequences=6, frames=2)
    path = tmp_path / "hospitals.toml"
    path.write_text(SCENARIO.format(root=root))
    scenario = Scenario.load(path)
    scenario.check(tmp_path / "run", None)  # the keys are known, the subsets well formed
    specs = scenario.site_specs()
    assert [(s.subset, s.group_by) for s in specs] == [
        ("sequence=1,2,3", "sequence"),
        ("sequence=4,5,6", "sequence"),
    ]
    data = open_source(str(root))  # as a site process holds it: whole, opened once
    names = {}
    for spec in specs:
        splits = site_splits(spec, data)
        by_split = {k: {s.meta["sequence"] for s in v} for k, v in splits.items()}
        assert all(len(v) == 1 for v in by_split.values())  # 3 sequences: one in each split
        assert set().union(*by_split.values()) == set(spec.subset.split("=")[1].split(","))
        for part in splits.values():
            for s in part:
                assert names.setdefault(s.name, spec.name) == spec.name
    assert len(names) == 12
    # more sites than listed are synthetic: the folder's subset and grouping are not theirs
    extra = scenario.with_site_count(3).sites[2]
    assert "subset" not in extra and "group-by" not in extra


def test_a_site_with_too_few_sequences_fails_when_it_opens_its_data(tmp_path):
    data = open_source(str(write_site(tmp_path / "cvc", sequences=6, frames=1)))
    spec = SiteSpec("a", str(tmp_path / "cvc"), subset="sequence=1,2", group_by="sequence")
    with pytest.raises(ValueError, match="2 'sequence' groups .* cannot fill the 3 splits"):
        site_splits(spec, data)
    with pytest.raises(ValueError, match="no sample has sequence = 7"):
        site_splits(SiteSpec("a", "x", subset="sequence=7"), data)


def test_baps_fed_site_puts_subset_and_group_by_in_the_node_config(tmp_path, monkeypatch):
    import baps_fed.launch.site as launch_site

    seen = {}
    monkeypatch.setattr(launch_site, "run_site", lambda s, group: seen.update(s.node_config))
    argv = ["site", "--superlink", "127.0.0.1:1", "--insecure", "--name", "a", "--data", "/d"]
    argv += ["--subset", "quality=good", "--group-by", "sequence", "--out", str(tmp_path)]
    main(argv)
    assert seen["subset"] == "quality=good" and seen["group-by"] == "sequence"
    assert spec_from_flat(seen, "a").group_by == "sequence"


def test_baps_fed_train_splits_a_subset_by_sequence(tmp_path, capsys):
    import json

    from baps_fed.data.splits import split_dataset

    root = write_site(tmp_path / "cvc", sequences=8, frames=2)
    run = tmp_path / "run"
    data = ["--data", str(root), "--subset", "sequence=1,2,3,4,5,6", "--group-by", "sequence"]
    args = ["train", *data, "--fm", "tiny", "--out", str(run), "--steps", "1", "--val-every", "1"]
    assert main(args) == 0, capsys.readouterr().err
    config = json.loads((run / "config.json").read_text())
    assert config["data"] == "cvc[sequence=1,2,3,4,5,6]"
    expected = split_dataset(
        open_source(str(root), subset="sequence=1,2,3,4,5,6"), group_by="sequence"
    )
    assert config["split_sizes"] == {k: len(v) for k, v in expected.items()}
    # a subset naming a sequence the folder lacks: the error names the values present
    bad = ["train", "--data", str(root), "--subset", "sequence=9", "--out", str(tmp_path / "bad")]
    assert main([*bad, "--fm", "tiny"]) == 2
    assert "the 'sequence' values present are: 1, 2, 3, 4, 5, 6, 7, 8" in capsys.readouterr().err
