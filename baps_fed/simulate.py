"""``baps-fed simulate``: N sites for R rounds on Flower's simulation runtime, on one machine.

A scenario (TOML under ``simulations/scenarios/``) lists the sites and the run settings; the
command line overrides them. We start a private SuperLink in simulation mode, submit the app
with ``flwr run``, stream its progress, and stop every process we started when the run ends,
fails or is interrupted. The coordinator writes the report into the output folder.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baps_fed.data.modalities import MODALITIES
from baps_fed.flower_launch import flwr_run, start_superlink, write_connection
from baps_fed.processes import ProcessGroup, free_port

DEFAULT_SCENARIO = Path(__file__).resolve().parent.parent / "simulations/scenarios/default.toml"


@dataclass
class Scenario:
    sites: list[dict[str, Any]]  # node-config tables: name, data, n, seed, scanner, fm
    rounds: int = 6
    train: dict[str, Any] = field(default_factory=dict)  # FedTrainConfig keys (run config)
    coordinator: dict[str, Any] = field(default_factory=dict)  # CoordinatorConfig keys

    @classmethod
    def load(cls, path: Path) -> Scenario:
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ValueError(f"scenario {path}: cannot read it ({err})") from err
        sites = raw.get("site", [])
        if not sites:
            raise ValueError(f"scenario {path}: no [[site]] tables; list at least one site")
        for i, s in enumerate(sites):
            if "data" not in s:
                raise ValueError(
                    f"scenario {path}: site {i + 1} has no 'data' (modality or folder)"
                )
            s.setdefault("name", f"site{i}")
        unknown = set(raw) - {"site", "rounds", "train", "coordinator"}
        if unknown:
            raise ValueError(f"scenario {path}: unknown keys {sorted(unknown)}")
        return cls(
            sites, int(raw.get("rounds", 6)), raw.get("train", {}), raw.get("coordinator", {})
        )

    def with_site_count(self, n: int) -> Scenario:
        """The first n sites; beyond the listed ones, more sites cycle through the modalities
        with fresh data seeds (a bigger, still non-IID federation)."""
        if n < 1:
            raise ValueError(f"--sites must be >= 1, got {n}")
        sites = [dict(s) for s in self.sites[:n]]
        template = self.sites[-1]
        for i in range(len(sites), n):
            sites.append(
                {**template, "name": f"{MODALITIES[i % len(MODALITIES)]}-{i}",
                 "data": MODALITIES[i % len(MODALITIES)], "seed": 100 + i}
            )  # fmt: skip
        return Scenario(sites, self.rounds, dict(self.train), dict(self.coordinator))

    def run_config(self, out: Path, fm: str | None) -> dict[str, Any]:
        # node-config keys, as a SuperNode would get them (the site's name is "site-name")
        sites = [{("site-name" if k == "name" else k): v for k, v in s.items()} for s in self.sites]
        if fm:
            sites = [dict(s, fm=fm) for s in sites]
        min_sites = min(int(self.coordinator.get("min-sites", len(sites))), len(sites))
        return {
            **self.train,
            **self.coordinator,
            "rounds": self.rounds,
            "min-sites": min_sites,
            "out-dir": str(out.resolve()),
            "sites": json.dumps(sites),
        }


def run_simulation(
    scenario: Scenario, out: Path, fm: str | None = None, cpus_per_site: int = 1
) -> int:
    """Run the scenario; returns flwr run's exit status. Everything started is stopped."""
    out.mkdir(parents=True, exist_ok=True)
    home = out / "flwr_home"
    port = free_port()
    write_connection(home, f"127.0.0.1:{port}", ca_cert=None)
    federation = (
        f"num-supernodes={len(scenario.sites)} client-resources-num-cpus={cpus_per_site:g} "
        "client-resources-num-gpus=0"
    )
    with ProcessGroup() as group:
        start_superlink(
            group, home, port, out / "superlink.log", simulation=True,
            database=out / "superlink.db",
        )  # fmt: skip
        print(f"SuperLink (simulation) on 127.0.0.1:{port}; logs in {out}", flush=True)
        return flwr_run(group, home, scenario.run_config(out, fm), out / "run.log", federation)
