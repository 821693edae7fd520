"""Scenarios: the sites and run settings of a multi-site run, from a TOML file.

A scenario (``simulations/scenarios/*.toml``) lists ``[[site]]`` node configs, ``rounds``, and
``[train]`` / ``[coordinator]`` run-config tables; the command line overrides them.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baps_fed.data.modalities import MODALITIES
from baps_fed.federation.contract import (
    FedTrainConfig,
    SiteSpec,
    habit_values,
    site_prompt_config,
    spec_from_flat,
)
from baps_fed.federation.coordinator_config import CoordinatorConfig
from baps_fed.federation.run_config import SITES_KEY, dashed, read_run_config
from baps_fed.flat_config import check_keys, flat_keys, values_from_flat

# a [[site]] table: a SiteSpec, its name under "name"
SCENARIO_SITE_KEYS = flat_keys(SiteSpec) | {"name", "data"}
# [[site]] keys that say how a data folder is read: they mean nothing to a synthetic site
_FOLDER_KEYS = {"layout", "subset", "group-by", "group_by"}
# the FM of a run's sites: one spec for all, one per site name, or None (each site's own)
SiteFMs = str | Mapping[str, str] | None
DEFAULT_SCENARIO = Path(__file__).resolve().parents[2] / "simulations/scenarios/default.toml"


@dataclass
class Scenario:
    sites: list[dict[str, Any]]  # node-config tables: name, data, n, seed, scanner, fm, ...
    rounds: int = 6
    train: dict[str, Any] = field(default_factory=dict)  # FedTrainConfig keys (run config)
    coordinator: dict[str, Any] = field(default_factory=dict)  # CoordinatorConfig keys

    @classmethod
    def load(cls, path: Path) -> Scenario:
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ValueError(f"scenario {path}: cannot read it ({err})") from err
        check_keys(raw, {"site", "rounds", "train", "coordinator"}, f"scenario {path}")
        check_keys(raw.get("train", {}), flat_keys(FedTrainConfig), f"scenario {path} [train]")
        check_keys(
            raw.get("coordinator", {}),
            flat_keys(CoordinatorConfig),
            f"scenario {path} [coordinator]",
        )
        sites = raw.get("site", [])
        if not sites:
            raise ValueError(f"scenario {path}: no [[site]] tables; list at least one site")
        for i, s in enumerate(sites):
            check_keys(s, SCENARIO_SITE_KEYS, f"scenario {path} [[site]] {i + 1}")
            if "data" not in s:
                raise ValueError(
                    f"scenario {path}: site {i + 1} has no 'data' (modality or folder)"
                )
            s.setdefault("name", f"site{i}")
        return cls(
            sites, int(raw.get("rounds", 6)), raw.get("train", {}), raw.get("coordinator", {})
        )

    def with_site_count(self, n: int) -> Scenario:
        """The first n sites; beyond the listed ones, more sites cycle through the modalities
        with fresh data seeds (a bigger, still non-IID federation)."""
        if n < 1:
            raise ValueError(f"--sites must be >= 1, got {n}")
        sites = [dict(s) for s in self.sites[:n]]
        template = {k: v for k, v in self.sites[-1].items() if k not in _FOLDER_KEYS}
        for i in range(len(sites), n):
            sites.append(
                {**template, "name": f"{MODALITIES[i % len(MODALITIES)]}-{i}",
                 "data": MODALITIES[i % len(MODALITIES)], "seed": 100 + i}
            )  # fmt: skip
        return Scenario(sites, self.rounds, dict(self.train), dict(self.coordinator))

    def site_specs(self, data_seed: int = 0) -> list[SiteSpec]:
        """The sites as the in-process benchmarks build them; ``data_seed`` shifts every
        site's synthetic data seed by 1000 x data_seed (a benchmark's seeds vary the data)."""
        return [
            SiteSpec(
                name=s["name"], data=s["data"], n=int(s.get("n", 200)),
                seed=int(s.get("seed", 0)) + 1000 * data_seed, scanner=int(s.get("scanner", 0)),
                **values_from_flat(SiteSpec, {k: v for k, v in s.items() if k in _FOLDER_KEYS}),
                **habit_values(s),  # its box habit: how its clinicians draw
            )
            for s in self.sites
        ]  # fmt: skip

    def check(self, out: Path, fm: SiteFMs) -> None:
        """Every setting of the run it makes, validated as the coordinator and the sites will
        (a zero count or a bad value fails here, before any process starts)."""
        config = self.run_config(out, fm)
        _, train = read_run_config(config, "the scenario's run config")
        for i, site in enumerate(json.loads(config[SITES_KEY])):
            spec = spec_from_flat(site, f"site{i}", where=f"the scenario's site {i + 1}")
            site_prompt_config(train, spec)  # a box habit the run's prompts cannot use

    def node_configs(self, fm: SiteFMs = None) -> list[dict[str, Any]]:
        """The sites' node configs, as a SuperNode would get them (the name is "site-name");
        ``fm``: one FM spec for every site, or one per site name (a shared service's)."""
        sites = [{("site-name" if k == "name" else k): v for k, v in s.items()} for s in self.sites]
        if isinstance(fm, Mapping):
            return [dict(s, fm=fm[s["site-name"]]) for s in sites]
        return [dict(s, fm=fm) for s in sites] if fm else sites

    def run_config(self, out: Path, fm: SiteFMs) -> dict[str, Any]:
        sites = self.node_configs(fm)
        min_sites = min(int(dashed(self.coordinator).get("min-sites", len(sites))), len(sites))
        return {
            **dashed(self.train),
            **dashed(self.coordinator),
            "rounds": self.rounds,
            "min-sites": min_sites,
            "out-dir": str(out.resolve()),
            "sites": json.dumps(sites),
        }


def partition_site(sites_json: str, partition: int, partitions: int) -> dict[str, Any]:
    """The node config of a simulated SuperNode: entry ``partition`` of the run config's
    ``sites``; when that list is empty (the pyproject's default, as ``flwr run .`` sends it),
    site ``partition`` of the default scenario, widened to ``partitions`` sites."""
    sites = json.loads(sites_json)
    if not sites:
        sites = Scenario.load(DEFAULT_SCENARIO).with_site_count(partitions).node_configs()
    if not 0 <= partition < len(sites):
        raise ValueError(
            f"simulation partition {partition} has no site: the run config's 'sites' lists "
            f"{len(sites)}; run as many supernodes as sites"
        )
    return sites[partition]
