"""The federation in one process, without Flower: the benchmarks' federated arms.

Each round runs what the Flower app runs, by the same code: every site's ``LocalSite.train_from``
from the state it kept, its reply encoded by ``encode_upload``, and the coordinator's
``RoundAggregator.apply_round`` (decode, guard, aggregation, server step). Flower adds only
transport, so a simulation reproduces these numbers.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from baps_fed.federation.local_site import LocalSite
from baps_fed.federation.round_aggregator import RoundAggregator
from baps_fed.federation.site_state import SiteState
from baps_fed.federation.uploads import SiteUpload, encode_upload

# (site name, the arrays it would send) -> the arrays it sends instead (robustness benchmarks)
Tamper = Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]


class InProcessFederation:
    def __init__(
        self, sites: list[LocalSite], aggregator: RoundAggregator, tamper: Tamper | None = None
    ) -> None:
        self.sites, self.aggregator, self.tamper = sites, aggregator, tamper
        self.states = {s.spec.name: SiteState() for s in sites}
        self.fm_queries = 0  # training FM image-queries of every site, all rounds
        self.failures: list[str] = []  # the aggregator's, all rounds

    @property
    def theta(self) -> np.ndarray:
        return self.aggregator.theta

    def run_round(self, server_round: int) -> bool:
        """One round at every site, then aggregation; False when no update was usable."""
        theta, uploads = self.aggregator.theta, []
        for site in self.sites:
            name = site.spec.name
            result = site.train_from(theta, server_round, self.states[name])
            self.states[name] = SiteState.after(result)
            self.fm_queries += int(result.home["fm-queries"])
            arrays = encode_upload(site.cfg.upload, theta, result)
            if self.tamper is not None:
                arrays = self.tamper(name, arrays)
            uploads.append(SiteUpload(name, arrays, dict(result.metrics)))
        self.aggregator.start_round()
        applied = self.aggregator.apply_round(server_round, uploads)
        self.failures += self.aggregator.failures
        return applied

    def run(self, rounds: int) -> None:
        for server_round in range(1, rounds + 1):
            self.run_round(server_round)

    def evaluate(self, sites: list[LocalSite] | None = None) -> dict[str, dict[str, float]]:
        """Each site's test metrics as it uses the global decoder (with its private head)."""
        return {
            s.spec.name: s.evaluate_from(self.theta, self.states[s.spec.name])
            for s in (sites or self.sites)
        }
