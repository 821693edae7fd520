"""Zero-shot vs local-only vs federated vs pooled-centralised BAPS, at equal FM image-queries.

The arms of ``simulations/bench_federated.py`` and ``bench_privacy.py``; every arm runs the code
a Flower site runs (``LocalSite``), and the federated arm is the in-process federation
(``InProcessFederation``: the Flower app's round without transport).
- local-only: each site trains alone for rounds x local_steps steps;
- federated: rounds of local_steps steps per site, aggregated by the run's ``RoundAggregator``,
  each site with its private head (``federated_global``: the shared decoder alone);
- pooled: one site holding every site's training split (each case prompted as its own site
  draws boxes), rounds x local_steps x sites steps, so its FM image-queries equal the
  federation's total.
Each site's test split is the same in every arm (splits hash sample names); ``test_n`` scores
every site instead on that many unseen cases from its own generator (same modality and
scanner, case indices after the site's own), so small sites' scores are as precise as large
ones'.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from baps_fed.data.modalities import MODALITIES, make_case
from baps_fed.data.prompts import PooledPrompting
from baps_fed.data.sample import SegmentationDataset
from baps_fed.federation.contract import FedTrainConfig, SiteSpec, initial_theta
from baps_fed.federation.in_process import InProcessFederation
from baps_fed.federation.local_site import LocalSite
from baps_fed.federation.round_aggregator import RoundAggregator
from baps_fed.federation.scenario import Scenario
from baps_fed.federation.server_optimizer import ServerOptConfig, ServerOptimizer

ARMS = ("zero_shot", "local_only", "federated_global", "federated", "pooled")


def held_out_test(spec: SiteSpec, n_test: int) -> SegmentationDataset:
    """``n_test`` cases the site never had: its generator's next indices (same scanner, seed)."""
    if spec.data not in MODALITIES:
        raise ValueError(
            f"site {spec.name!r}: --test-n needs a synthetic modality, not {spec.data!r}"
        )
    cases = [make_case(spec.data, spec.n + i, spec.seed, spec.scanner) for i in range(n_test)]
    return SegmentationDataset(f"{spec.name}-held-out", [c for c in cases if c.mask.sum() >= 16])


def evaluate_all(sites: list[LocalSite], theta: np.ndarray) -> dict[str, dict]:
    """Every site's test split under one decoder, with no private head."""
    return {s.spec.name: s.evaluate(theta) for s in sites}


def pooled_site(sites: list[LocalSite], cfg: FedTrainConfig, fm) -> LocalSite:
    """One site holding every site's training split, one model (no private head); each case
    is prompted as its own site draws its boxes (a pool keeps the boxes its hospitals drew)."""
    cases = [case for site in sites for case in site.splits["train"]]
    empty = SegmentationDataset("pooled", [], problems=[])
    pooled = LocalSite(
        SiteSpec("pooled", "pooled"),
        replace(cfg, private_head="none"),
        fm=fm,
        splits={"train": SegmentationDataset("pooled", cases, problems=[]), "val": empty,
                "test": empty},
    )  # fmt: skip
    habits = PooledPrompting(tuple(s.prompting for s in sites for _ in range(s.num_train)))
    pooled.step_cfg = replace(pooled.step_cfg, prompt=habits)
    return pooled


def run_seed(
    scenario: Scenario,
    cfg: FedTrainConfig,
    rounds: int,
    seed: int,
    fm,
    server: ServerOptConfig,
    arms: tuple[str, ...] = ("local_only", "federated", "pooled"),
    test_n: int | None = None,
) -> dict:
    cfg = replace(cfg, master_seed=seed)
    sites = [LocalSite(sp, cfg, fm=fm) for sp in scenario.site_specs(seed)]  # as a site opens it
    if test_n:
        for site in sites:  # training never reads the test split: swapping it changes only scores
            site.splits["test"] = held_out_test(site.spec, test_n)
    theta0 = initial_theta(cfg)
    out: dict = {"zero_shot": evaluate_all(sites, theta0)}
    steps = rounds * cfg.local_steps

    if "local_only" in arms:
        t0, queries, local, heads = time.perf_counter(), 0, {}, {}
        for site in sites:  # local-only: the same steps, no averaging
            theta, state, private = theta0, None, None
            for rnd in range(1, rounds + 1):
                r = site.train_round(theta, rnd, state, private)
                theta, state, private = theta + r.update, r.state, r.private
                queries += r.home["fm-queries"]
            local[site.spec.name] = site.evaluate(theta, private)
            heads[site.spec.name] = None if private is None else private.tolist()
        out["local_only"] = local
        out["local_only_private"] = heads
        out["local_only_queries"] = queries
        out["local_only_s"] = time.perf_counter() - t0

    if "federated" in arms:
        t0 = time.perf_counter()
        aggregator = RoundAggregator(ServerOptimizer(server), theta0, cfg)
        federation = InProcessFederation(sites, aggregator)
        federation.run(rounds)
        out["federated"] = federation.evaluate()
        out["federated_global"] = {  # the shared decoder alone, without the private heads
            n: {**m, "dice": m["global-dice"]} for n, m in out["federated"].items()
        }
        out["federated_private"] = {  # what each private head learnt (it never left the site)
            n: None if st.private is None else st.private.tolist()
            for n, st in federation.states.items()
        }
        out["federated_queries"] = federation.fm_queries
        out["federated_s"] = time.perf_counter() - t0

    if "pooled" in arms:
        t0 = time.perf_counter()
        pooled = pooled_site(sites, replace(cfg, local_steps=steps * len(sites)), fm)
        r = pooled.train_round(theta0, 1, None)
        out["pooled"] = evaluate_all(sites, theta0 + r.update)
        out["pooled_queries"] = r.home["fm-queries"]
        out["pooled_s"] = time.perf_counter() - t0
    out["train_sizes"] = {s.spec.name: s.num_train for s in sites}
    return out
