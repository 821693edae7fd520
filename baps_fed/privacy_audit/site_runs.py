"""The audited federation and the attacker's shadow sites, with what the coordinator saw.

The target run is the in-process federation (``InProcessFederation``: the Flower app's round
without transport) on the scenario's sites, each training on its members only. Every site
records, round by round, the global decoder it started from and its upload in both forms, each
made by the site's own encoder (``encode_upload``): the dense update and the seed-and-scalar
bytes. Both come from the same training (a seed upload replays to the dense update bit for bit),
so one run serves the attacker of either upload kind.

A shadow site is the attacker's imitation of one target site: the same site name (hence the
same public perturbation seeds), the same run config and DP settings, trained on a half of the
site's candidates that the attacker chose, round by round from the global decoders the
coordinator saw the target start from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from baps_fed.data.sample import SegmentationDataset
from baps_fed.federation.contract import FedTrainConfig, RoundResult, initial_theta
from baps_fed.federation.in_process import InProcessFederation
from baps_fed.federation.local_site import LocalSite
from baps_fed.federation.round_aggregator import RoundAggregator
from baps_fed.federation.server_optimizer import ServerOptConfig, ServerOptimizer
from baps_fed.federation.site_state import SiteState
from baps_fed.federation.uploads import encode_upload
from baps_fed.fm.contract import BlackboxFM
from baps_fed.privacy_audit.candidates import SitePool


@dataclass
class SiteRecord:
    """What the coordinator saw of one site, round by round."""

    name: str
    rounds: list[int] = field(default_factory=list)
    globals: list[np.ndarray] = field(default_factory=list)  # the decoder it was sent
    dense: list[np.ndarray] = field(default_factory=list)  # its update, as a dense upload
    seeds: list[bytes] = field(default_factory=list)  # its round, as a seed-and-scalar upload
    metrics: list[dict[str, float]] = field(default_factory=list)  # what the site reported

    def add(self, server_round: int, theta_global: np.ndarray, result: RoundResult) -> None:
        self.rounds.append(server_round)
        self.globals.append(np.array(theta_global, np.float32))
        self.dense.append(encode_upload("dense", theta_global, result)["update"].copy())
        self.seeds.append(encode_upload("seeds", theta_global, result)["scalars"].tobytes())
        self.metrics.append(dict(result.metrics))


class RecordingSite(LocalSite):
    """A LocalSite that trains on given cases and records what it sends."""

    def __init__(
        self, pool: SitePool, train: np.ndarray, cfg: FedTrainConfig, fm: BlackboxFM
    ) -> None:
        empty = SegmentationDataset(f"{pool.spec.name}-none", [])
        splits = {"train": pool.subset(train, pool.spec.name), "val": empty, "test": empty}
        super().__init__(pool.spec, cfg, fm=fm, splits=splits)
        self.record = SiteRecord(pool.spec.name)

    def restart(self, pool: SitePool, train: np.ndarray) -> None:
        """Train on other cases from now on, with an empty record: one shadow site object
        serves every shadow of a site (building a site's decoder is what costs)."""
        self.images, self.masks = pool.images[train], pool.masks[train]
        self.record = SiteRecord(pool.spec.name)

    def train_round(
        self,
        theta_global: np.ndarray,
        server_round: int,
        state=None,
        private=None,
        personal=None,
        privacy=None,
    ) -> RoundResult:
        result = super().train_round(theta_global, server_round, state, private, personal, privacy)
        self.record.add(server_round, theta_global, result)
        return result


def run_target(
    pools: list[SitePool],
    cfg: FedTrainConfig,
    fm: BlackboxFM,
    rounds: int,
    server: ServerOptConfig,
) -> tuple[list[RecordingSite], np.ndarray]:
    """The audited federation: every site on its members; its sites and the final decoder."""
    sites = [RecordingSite(p, p.members, cfg, fm) for p in pools]
    aggregator = RoundAggregator(ServerOptimizer(server), initial_theta(cfg), cfg)
    federation = InProcessFederation(sites, aggregator)
    federation.run(rounds)
    return sites, federation.theta


def run_shadow(
    site: RecordingSite, pool: SitePool, train: np.ndarray, target: SiteRecord
) -> SiteRecord:
    """One shadow of a target site: ``site`` (the attacker's, with the target's name and run
    config) trained afresh on ``train`` round by round from the target's global decoders."""
    site.restart(pool, train)
    state = SiteState()
    for server_round, theta in zip(target.rounds, target.globals, strict=True):
        state = SiteState.after(site.train_from(theta, server_round, state))
    return site.record


def shadow_halves(n: int, shadows: int, rng: np.random.Generator) -> np.ndarray:
    """bool [shadows, n]: pairs of complementary random halves, so every candidate is in
    exactly one shadow of each pair (an "in" and an "out" reference for every candidate)."""
    if shadows % 2:
        raise ValueError(f"shadows come in complementary pairs: give an even number, not {shadows}")
    halves = []
    for _ in range(shadows // 2):
        half = np.zeros(n, bool)
        half[rng.permutation(n)[: n // 2]] = True
        halves += [half, ~half]
    return np.array(halves, bool).reshape(shadows, n)
