"""One-run audit of the DP mechanism on SPSA's scalars: canaries in, epsilon lower bound out.

What is audited is the code a DP step runs (``spsa_step``): Poisson batches (``poisson_batch``),
each image's K-vector clipped, summed, noised and divided by the expected batch
(``private_k_vector``), cast to float32 and sent in the seed-and-scalar wire format
(``pack_scalars``); the accountant (``PrivacyLedger``) says what epsilon that run spent.

The canaries are the strongest the auditor can build (white-box). It knows the perturbation
seeds, so it knows in advance which K directions every step will probe; each canary is an image
crafted to change the loss along its own few (step, k) directions and nowhere else, at the clip
norm (given here by its K-vector: twice the clip bound on its slot, which clipping cuts to C).
No two canaries share a slot, so they never interfere. Each canary is in the site's training
data with probability 1/2 (the auditor keeps the coin flips); the site's data is the canaries
that are in. From the released scalars alone the auditor scores each canary by its largest
scalar over its slots (a canary shows only in the steps whose batch drew it), guesses "in" for
the top ``g`` scores, and turns its correct guesses into an epsilon lower bound
(``one_run_bound``), for several ``g`` at once with a Bonferroni split of beta.

The broken mechanism is the same code with the noise multiplier divided by ``noise_divisor``
while the accountant still books the configured one: the audit must flag it (lower bound above
the accountant's epsilon); the real one must never be flagged, except with probability beta.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from baps_fed.federation.seed_upload import pack_scalars, unpack_scalars
from baps_fed.method.dp import (
    DPConfig,
    PrivacyLedger,
    noise_for_epsilon,
    poisson_batch,
    private_k_vector,
    secret_rng,
)
from baps_fed.privacy_audit.one_run_bound import ceiling, epsilon_lower_bound


@dataclass(frozen=True)
class CanaryConfig:
    """An audited run: its releases, DP settings and canaries. The defaults make a broken
    mechanism (noise / 10) detectable at a claimed epsilon of 1 (docs/privacy-and-robustness.md,
    "What the audit shows"): few canaries keep the 2 m delta term small, a low sample rate keeps
    the noise for epsilon 1 low, many steps give the canaries enough slots."""

    epsilon: float = 1.0  # claimed: the noise multiplier is the accountant's for it
    delta: float = 1e-5
    steps: int = 2000  # releases of K scalars
    k: int = 5  # scalars per release (sp-avg)
    steps_per_round: int = 8  # releases per seed-and-scalar upload
    sample_rate: float = 0.01
    clip: float = 0.25
    canaries: int = 400
    slots: int = 25  # (step, k) slots each canary owns
    # "in" guesses tried (those up to the canary count), beta split between them
    guesses: tuple[int, ...] = (10, 20, 40, 80)
    beta: float = 0.05
    seed: int = 0  # the canaries' slots and coin flips (the auditor's, not the site's)

    def __post_init__(self) -> None:
        if self.canaries * self.slots > self.steps * self.k:
            raise ValueError(
                f"{self.canaries} canaries x {self.slots} slots need {self.canaries * self.slots}"
                f" (step, k) slots; {self.steps} steps x K={self.k} have {self.steps * self.k}:"
                " give more steps (--canary-steps) or fewer canaries (--canaries)"
            )
        if min(self.canaries, self.slots, self.steps, self.k, self.steps_per_round) < 1:
            raise ValueError("canaries, slots, steps, k and steps-per-round must be >= 1")
        if not self.tried:
            raise ValueError(f"no guess count of {self.guesses} lies in 1..{self.canaries}")

    @property
    def tried(self) -> tuple[int, ...]:
        """The guess counts this many canaries allow."""
        return tuple(g for g in self.guesses if 1 <= g <= self.canaries)


@dataclass(frozen=True)
class CanaryResult:
    mechanism: str  # "real" or "broken (noise / 10)"
    claimed_epsilon: float
    accountant_epsilon: float  # what the ledger books for the run
    noise_multiplier: float  # the noise the mechanism really added (x clip)
    lower_bound: float  # the audit's epsilon lower bound at 1 - beta
    guesses: int  # the "in" guesses that gave it
    correct: int
    ceiling: float  # the most this many guesses could certify (all right, delta 0)
    canaries: int
    included: int

    @property
    def flagged(self) -> bool:
        return self.lower_bound > self.accountant_epsilon

    def to_dict(self) -> dict:
        return asdict(self) | {"flagged": self.flagged}


@dataclass(frozen=True)
class Canaries:
    """The auditor's design: each canary's slots (flat step * k + k indices) and coin flip."""

    slots: np.ndarray  # int [canaries, slots]
    included: np.ndarray  # bool [canaries]

    @classmethod
    def draw(cls, cfg: CanaryConfig) -> Canaries:
        rng = np.random.default_rng(cfg.seed)
        slots = rng.permutation(cfg.steps * cfg.k)[: cfg.canaries * cfg.slots]
        return cls(slots.reshape(cfg.canaries, cfg.slots), rng.random(cfg.canaries) < 0.5)


def released_scalars(
    cfg: CanaryConfig, canaries: Canaries, dp: DPConfig, rng: np.random.Generator
) -> list[bytes]:
    """The site's run on the included canaries: one seed-and-scalar upload per round."""
    members = np.flatnonzero(canaries.included)
    n = members.size
    # active[j, t]: the k on which member j's loss moves at step t (-1: none)
    active = np.full((n, cfg.steps), -1, np.int64)
    rows = np.repeat(np.arange(n), cfg.slots)
    flat = canaries.slots[members].ravel()
    active[rows, flat // cfg.k] = flat % cfg.k
    scalars = np.zeros((cfg.steps, cfg.k), np.float32)
    for t in range(cfg.steps):
        batch = poisson_batch(n, dp.sample_rate, rng)
        diffs = np.zeros((batch.size, cfg.k))
        ks = active[batch, t]
        diffs[np.flatnonzero(ks >= 0), ks[ks >= 0]] = 2 * dp.clip  # clipped to C in the mechanism
        expected = dp.sample_rate * max(n, 1)
        scalars[t] = private_k_vector(diffs, dp, expected, rng, k=cfg.k).astype(np.float32)
    per_round = cfg.steps_per_round
    # c (the perturbation scale) plays no part in the audit: any value packs the same scalars
    return [pack_scalars(1.0, scalars[i : i + per_round]) for i in range(0, cfg.steps, per_round)]


def canary_scores(cfg: CanaryConfig, canaries: Canaries, uploads: list[bytes]) -> np.ndarray:
    """Each canary's largest released scalar over its slots, read from the uploads as sent."""
    released = np.concatenate([unpack_scalars(blob)[1] for blob in uploads]).ravel()
    if released.size != cfg.steps * cfg.k:
        raise ValueError(f"uploads hold {released.size} scalars, the run {cfg.steps * cfg.k}")
    return released[canaries.slots].max(axis=1)


def run_canary_audit(
    cfg: CanaryConfig, noise_divisor: float = 1.0, rng: np.random.Generator | None = None
) -> CanaryResult:
    """One audited run. ``noise_divisor`` > 1 breaks the mechanism (its noise / divisor, the
    accountant unchanged); ``rng`` None draws batches and noise from OS entropy, as a site does."""
    sigma = noise_for_epsilon(cfg.epsilon, cfg.delta, cfg.sample_rate, cfg.steps)
    booked = DPConfig(cfg.clip, sigma, cfg.sample_rate, cfg.delta)
    used = DPConfig(cfg.clip, sigma / noise_divisor, cfg.sample_rate, cfg.delta)
    ledger = PrivacyLedger(booked)
    ledger.record(cfg.steps)
    canaries = Canaries.draw(cfg)
    uploads = released_scalars(cfg, canaries, used, rng if rng is not None else secret_rng())
    order = np.argsort(-canary_scores(cfg, canaries, uploads), kind="stable")
    beta = cfg.beta / len(cfg.tried)  # every g tried is one test: Bonferroni
    best = (0.0, cfg.tried[0], int(canaries.included[order[: cfg.tried[0]]].sum()))
    for g in cfg.tried:
        correct = int(canaries.included[order[:g]].sum())
        bound = epsilon_lower_bound(cfg.canaries, g, correct, cfg.delta, beta)
        if bound > best[0]:
            best = (bound, g, correct)
    return CanaryResult(
        mechanism="real" if noise_divisor == 1 else f"broken (noise / {noise_divisor:g})",
        claimed_epsilon=cfg.epsilon,
        accountant_epsilon=ledger.epsilon(),
        noise_multiplier=used.noise_multiplier,
        lower_bound=best[0],
        guesses=best[1],
        correct=best[2],
        ceiling=ceiling(max(cfg.tried), beta),
        canaries=cfg.canaries,
        included=int(canaries.included.sum()),
    )
