"""The whole audit on a scenario: membership inference per DP setting and upload kind, and the
one-run canary audit of the DP mechanism; results as plain dicts for ``report``.

Per DP setting (off, or a target epsilon turned into the noise multiplier that spends exactly it
over the run's releases, as ``simulations/bench_privacy.py`` does): the scenario's federation
runs with every site training on its members (``candidates``), the attacker rebuilds each
site's model from its uploads (``views``), trains ``shadows`` shadow sites per site
(``site_runs``), and scores every candidate of every site with both attacks (``membership``);
candidates of all sites are pooled into one ROC per (upload kind, attack).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from baps_fed.federation.contract import FedTrainConfig, site_prompt_config
from baps_fed.federation.scenario import DEFAULT_SCENARIO, Scenario
from baps_fed.federation.server_optimizer import ServerOptConfig
from baps_fed.fm.contract import BlackboxFM
from baps_fed.method.dp import DPConfig, PrivacyLedger, noise_for_epsilon
from baps_fed.privacy_audit.canary_audit import CanaryConfig, run_canary_audit
from baps_fed.privacy_audit.candidates import SitePool, candidate_losses, site_pool
from baps_fed.privacy_audit.membership import loss_attack, reference_attack
from baps_fed.privacy_audit.roc import roc_counts, score_attack
from baps_fed.privacy_audit.site_runs import (
    RecordingSite,
    SiteRecord,
    run_shadow,
    run_target,
    shadow_halves,
)
from baps_fed.privacy_audit.views import UPLOAD_VIEWS, AttackerModels, view_model

Log = Callable[[str], None]


@dataclass(frozen=True)
class MembershipConfig:
    """The membership audit; None keeps the scenario's value."""

    scenario: Path = DEFAULT_SCENARIO
    rounds: int | None = None
    local_steps: int | None = None
    max_candidates: int | None = None  # per site, half of them members
    shadows: int = 2  # per site, in complementary pairs
    epsilons: tuple[float | None, ...] = (None, 8.0, 4.0, 1.0)  # None: DP off
    delta: float = 1e-5
    seed: int = 0
    bootstrap: int = 1000

    def __post_init__(self) -> None:
        if self.shadows < 0 or self.shadows % 2:
            raise ValueError(f"shadows must be an even number >= 0, got {self.shadows}")
        if any(e is not None and not e > 0 for e in self.epsilons):
            shown = ", ".join("off" if e is None else f"{e:g}" for e in self.epsilons)
            raise ValueError(f"epsilons must be > 0 (or off), got {shown}")


@dataclass
class Setup:
    """The scenario as the audit runs it."""

    base: FedTrainConfig
    rounds: int
    server: ServerOptConfig
    pools: list[SitePool] = field(default_factory=list)

    @property
    def releases(self) -> int:
        return self.rounds * self.base.local_steps


def setup(cfg: MembershipConfig, fm_spec: str) -> Setup:
    scenario = Scenario.load(cfg.scenario)
    train = dict(scenario.train)
    if cfg.local_steps is not None:
        train["local-steps"] = cfg.local_steps
    base = FedTrainConfig.from_flat(train)
    server = ServerOptConfig(name=scenario.coordinator.get("server-opt", "fedavg"))
    s = Setup(base, cfg.rounds or scenario.rounds, server)
    for spec in scenario.site_specs():
        spec = replace(spec, fm=fm_spec, dp_delta=cfg.delta)
        prompting = site_prompt_config(base, spec)
        s.pools.append(site_pool(spec, prompting, base.image_size, cfg.seed, cfg.max_candidates))
    return s


def dp_setting(s: Setup, epsilon: float | None, delta: float) -> tuple[str, FedTrainConfig]:
    if epsilon is None:
        return "no DP", s.base
    sigma = noise_for_epsilon(epsilon, delta, s.base.dp_sample_rate, s.releases)
    return f"epsilon {epsilon:g}", replace(s.base, dp=True, dp_noise=sigma)


def accountant_epsilon(train: FedTrainConfig, delta: float, releases: int) -> float | None:
    """What each site's ledger books for the run (None: no DP, nothing booked)."""
    if not train.dp:
        return None
    ledger = PrivacyLedger(DPConfig(train.dp_clip, train.dp_noise, train.dp_sample_rate, delta))
    ledger.record(releases)
    return ledger.epsilon()


def _losses(
    kind: str,
    record: SiteRecord,
    train: FedTrainConfig,
    models: AttackerModels,
    fm: BlackboxFM,
    pool: SitePool,
) -> np.ndarray:
    """The candidates' losses through the model the attacker of ``kind`` rebuilt from ``record``."""
    model, theta = view_model(kind, record, train, models)
    return candidate_losses(model, theta, fm, pool, train.loss)


def audit_setting(
    s: Setup, epsilon: float | None, cfg: MembershipConfig, fm: BlackboxFM, log: Log
) -> dict:
    """One DP setting: the federation, the shadows, both attacks on both upload views."""
    label, train = dp_setting(s, epsilon, cfg.delta)
    t0, cpu0, queries0 = time.perf_counter(), time.process_time(), fm.meter.images
    sites, _ = run_target(s.pools, train, fm, s.rounds, s.server)
    rng = np.random.default_rng([cfg.seed, 2])
    losses: dict[str, list] = {k: [] for k in UPLOAD_VIEWS}  # per site: target, shadows
    shadow_in = []
    for pool, site in zip(s.pools, sites, strict=True):
        halves = shadow_halves(len(pool.data), cfg.shadows, rng)
        # the attacker's own site object; each shadow restarts it on its half
        attacker = RecordingSite(pool, np.ones(len(pool.data), bool), train, fm)
        models = AttackerModels.of(attacker)
        shadows = [run_shadow(attacker, pool, h, site.record) for h in halves]
        shadow_in.append(halves)
        for kind in UPLOAD_VIEWS:
            target = _losses(kind, site.record, train, models, fm, pool)
            refs = [_losses(kind, r, train, models, fm, pool) for r in shadows]
            losses[kind].append((target, np.array(refs).reshape(len(halves), target.size)))
        log(f"  {label}: site {pool.spec.name} done ({time.perf_counter() - t0:.0f} s)")
    members = np.concatenate([p.members for p in s.pools])
    site_of = np.concatenate([np.full(len(p.data), i) for i, p in enumerate(s.pools)])
    attacks = []
    for kind in UPLOAD_VIEWS:
        target = np.concatenate([t for t, _ in losses[kind]])
        scores = {"loss": loss_attack(target, site_of)}
        if cfg.shadows:
            refs = np.concatenate([r for _, r in losses[kind]], axis=1)
            scores["reference"] = reference_attack(target, refs, np.concatenate(shadow_in, 1))
        for attack, sc in scores.items():
            result = score_attack(sc, members, cfg.bootstrap, seed=cfg.seed)
            attacks.append(
                {"upload": kind, "attack": attack, **result.to_dict(),
                 "roc": roc_counts(sc, members),
                 "scores": sc.tolist()}  # per candidate: what a pooled audit joins
            )  # fmt: skip
    return {
        "setting": label,
        "epsilon": epsilon,
        "noise_multiplier": train.dp_noise if train.dp else 0.0,
        "accountant_epsilon": accountant_epsilon(train, cfg.delta, s.releases),
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - cpu0,  # this process's, on a shared machine
        "fm_images": fm.meter.images - queries0,
        "attacks": attacks,
        "members": members.astype(int).tolist(),
        "units": [u for p in s.pools for u in p.units],
    }


def run_membership(
    cfg: MembershipConfig,
    fm: BlackboxFM,
    fm_spec: str,
    log: Log = print,
    done: Callable[[dict], None] | None = None,
) -> dict:
    """Every DP setting in turn; ``done`` gets the result so far after each one."""
    s = setup(cfg, fm_spec)
    log(
        f"membership audit: {len(s.pools)} sites, {sum(len(p.data) for p in s.pools)} "
        f"candidates (half members), {s.rounds} rounds x {s.base.local_steps} steps, "
        f"{cfg.shadows} shadow sites per site"
    )
    result = {
        "sites": [
            {
                "name": p.spec.name,
                "data": p.spec.data,
                "candidates": len(p.data),
                "members": int(p.members.sum()),
            }
            for p in s.pools
        ],  # fmt: skip
        "rounds": s.rounds,
        "local_steps": s.base.local_steps,
        "releases": s.releases,
        "dp_sample_rate": s.base.dp_sample_rate,
        "dp_clip": s.base.dp_clip,
        "delta": cfg.delta,
        "shadows": cfg.shadows,
        "settings": [],
    }
    for epsilon in cfg.epsilons:
        setting = audit_setting(s, epsilon, cfg, fm, log)
        result["settings"].append(setting)
        log(f"{setting['setting']}: {setting['seconds']:.0f} s")
        if done is not None:
            done(result)
    return result


def run_canaries(
    cfg: CanaryConfig, epsilons: tuple[float, ...], divisor: float = 10.0, seeded: bool = False
) -> list[dict]:
    """The canary audit at each claimed epsilon, on the real and on the broken mechanism.
    ``seeded``: batches and noise from the audit's seed (reproducible) instead of OS entropy."""
    rows = []
    for eps in epsilons:
        for d in (1.0, divisor):
            rng = np.random.default_rng([cfg.seed, int(d)]) if seeded else None
            rows.append(run_canary_audit(replace(cfg, epsilon=eps), d, rng).to_dict())
    return rows
