"""One configuration source: the dataclasses hold every default, and a misspelt key anywhere
(scenario, run config, pyproject, a site's node config) fails fast naming the closest key."""

from __future__ import annotations

import argparse
import dataclasses
import re
import tomllib
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from baps_fed.cli import main
from baps_fed.federation.contract import FedTrainConfig, spec_from_flat
from baps_fed.federation.coordinator_config import CoordinatorConfig
from baps_fed.federation.run_config import SITES_KEY, read_run_config, run_config_keys
from baps_fed.federation.scenario import DEFAULT_SCENARIO, Scenario
from baps_fed.flat_config import ConfigKeyError
from coordinator.app import RunRefused, run_rounds
from sites.site_app import local_site, site_spec

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _pyproject_run_config() -> dict:
    return tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]


def test_the_pyproject_run_config_is_the_dataclasses_defaults():
    config = _pyproject_run_config()
    assert set(config) == run_config_keys()
    for cls in (CoordinatorConfig, FedTrainConfig):
        for f in dataclasses.fields(cls):
            key = f.name.replace("_", "-")
            assert config[key] == f.default, f"pyproject {key} = {config[key]!r}, {cls.__name__}"
    assert config[SITES_KEY] == "[]"


@pytest.mark.parametrize(
    ("key", "closest"),
    [("local-step", "local-steps"), ("server_lr", None), ("mastr-seed", "master-seed")],
)
def test_a_misspelt_run_config_key_names_the_closest_valid_one(key, closest):
    config = {**_pyproject_run_config(), key: 1}
    if closest is None:  # underscores are the field's own name: accepted
        read_run_config(config)
        return
    with pytest.raises(ConfigKeyError, match=f"unknown key '{key}'; did you mean '{closest}'"):
        read_run_config(config)


def test_the_coordinator_app_refuses_a_misspelt_pyproject_key_before_any_round(tmp_path):
    # what a typo in [tool.flwr.app.config] becomes: a run config holding the wrong key
    run_config = {**_pyproject_run_config(), "out-dir": str(tmp_path), "roundz": 3}
    context = Context(
        run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )
    # one line (Flower logs a RunRefused without its traceback), naming the closest key
    refused = "refused the run: run config: unknown key 'roundz'; did you mean 'rounds'?"
    with pytest.raises(RunRefused, match=re.escape(refused)):
        run_rounds(None, context)  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())  # nothing was written


def test_a_misspelt_scenario_key_names_the_table_and_the_closest_key(tmp_path):
    text = DEFAULT_SCENARIO.read_text()
    bad = tmp_path / "bad.toml"
    for original, typo, where, closest in [
        ("local-steps = 8", "local-step = 8", "[train]", "local-steps"),
        ("min-sites = 4", "min-site = 4", "[coordinator]", "min-sites"),
        ('data = "fundus"', 'data = "fundus"\nscaner = 2', "[[site]] 3", "scanner"),
        ("rounds = 6", "roundz = 6", "bad.toml", "rounds"),
    ]:
        assert original in text
        bad.write_text(text.replace(original, typo, 1))
        pattern = f"{re.escape(where)}: unknown key .*did you mean '{closest}'"
        with pytest.raises(ConfigKeyError, match=pattern):
            Scenario.load(bad)


def test_coordinator_config_flag_with_a_misspelt_key_fails_before_anything_starts(tmp_path, capsys):
    status = main(
        ["coordinator", "--insecure", "--out", str(tmp_path / "c"), "--config", "local-step=20"]
    )
    assert status == 2
    err = capsys.readouterr().err
    assert "--config: unknown key 'local-step'; did you mean 'local-steps'?" in err
    assert not (tmp_path / "c").exists()


def test_a_misspelt_node_config_key_names_the_closest_one():
    with pytest.raises(ConfigKeyError, match="node config: unknown key 'scaner'.*'scanner'"):
        spec_from_flat({"data": "fundus", "scaner": 2}, "a")
    # Flower's simulation keys are a node's own and accepted
    assert spec_from_flat({"data": "fundus", "partition-id": 0}, "a").scanner == 0


def test_a_site_refuses_a_misspelt_node_config_key():
    context = Context(
        run_id=1,
        node_id=5,
        node_config={"data": "fundus", "site-nmae": "x"},
        state=RecordDict(),
        run_config=_pyproject_run_config(),
    )
    with pytest.raises(ConfigKeyError, match="did you mean 'site-name'"):
        local_site(context)


def test_flwr_run_defaults_make_each_simulated_partition_a_default_scenario_site():
    """`flwr run .` sends sites = "[]": partition i is site i of the default scenario (more
    partitions than its four sites cycle through the modalities with new names and seeds)."""
    names = []
    for pid in range(6):
        node = {"partition-id": pid, "num-partitions": 6}
        context = Context(run_id=1, node_id=10 + pid, node_config=node, state=RecordDict(),
                          run_config=_pyproject_run_config())  # fmt: skip
        names.append(site_spec(context).name)
    assert names[:4] == [s["name"] for s in Scenario.load(DEFAULT_SCENARIO).sites]
    assert len(set(names)) == 6
    # an explicit list still says when a partition has no site
    node = {"partition-id": 2, "num-partitions": 3}
    run_config = {**_pyproject_run_config(), SITES_KEY: '[{"data": "fundus"}]'}
    context = Context(run_id=1, node_id=1, node_config=node, state=RecordDict(),
                      run_config=run_config)  # fmt: skip
    with pytest.raises(
        ValueError, match="partition 2 has no site: the run config's 'sites' lists 1"
    ):
        site_spec(context)


def test_what_reaches_flower_has_its_keys_dashed_and_whole_counts(tmp_path):
    """Flower refuses an override key its pyproject table lacks ("[code 15]"), so the CLI and
    scenarios send dashed keys; a count given as 2.5 is refused, not truncated."""
    from baps_fed.cli.federation import _run_config_from_args

    args = argparse.Namespace(
        rounds=1, min_sites=1, resume=False, overwrite=False, local_steps=None,
        round_timeout=None, config=["server_lr=0.5", "batch_size=4"],
    )  # fmt: skip
    config = _run_config_from_args(args)
    assert config["server-lr"] == 0.5 and config["batch-size"] == 4
    assert set(config) <= set(_pyproject_run_config())
    scenario = Scenario.load(DEFAULT_SCENARIO)
    scenario.train["local_steps"] = 2
    assert set(scenario.run_config(tmp_path, None)) <= set(_pyproject_run_config())
    with pytest.raises(ValueError, match="config rounds: expected a whole number, got 2.5"):
        read_run_config({"rounds": 2.5})
