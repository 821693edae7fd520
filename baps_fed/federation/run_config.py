"""The run config: one flat table of settings for a whole federation.

Flower carries it to the coordinator and to every site (defaults: ``[tool.flwr.app.config]`` in
pyproject.toml, which tests/federation/test_configuration.py holds equal to the dataclasses;
overrides: ``flwr run --run-config``, ``baps-fed coordinator --config``, a scenario's
``[train]`` and ``[coordinator]`` tables). Its keys are the dashed fields of
``CoordinatorConfig`` and ``FedTrainConfig``, plus ``sites`` (the simulation's node configs,
as JSON).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from baps_fed.federation.contract import FedTrainConfig
from baps_fed.federation.coordinator_config import CoordinatorConfig
from baps_fed.flat_config import check_keys, flat_keys

SITES_KEY = "sites"  # simulation only: the node config of each partition (a JSON list)


def run_config_keys() -> set[str]:
    return flat_keys(CoordinatorConfig, FedTrainConfig) | {SITES_KEY}


def dashed(config: Mapping[str, Any]) -> dict[str, Any]:
    """The same settings under their dashed keys, the only form Flower accepts: it refuses an
    override whose key ``[tool.flwr.app.config]`` lacks ("local_steps") before any app runs."""
    return {key.replace("_", "-"): value for key, value in config.items()}


def check_run_config(config: Mapping[str, Any], where: str = "run config") -> None:
    """Refuse a key that no setting has, naming the closest one."""
    check_keys(config, run_config_keys(), where)


def read_run_config(
    config: Mapping[str, Any], where: str = "run config"
) -> tuple[CoordinatorConfig, FedTrainConfig]:
    """The coordinator's and the sites' settings from one run config."""
    check_run_config(config, where)
    return CoordinatorConfig.from_run_config(dict(config)), FedTrainConfig.from_flat(config)
