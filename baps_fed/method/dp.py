"""Differential privacy on SPSA's scalars: clip, noise and account for the K loss differences.

In an SPSA step only the K loss differences ``L(w + c Delta_k) - L(w - c Delta_k)`` depend on
the site's images; the Deltas come from public seeds. So the site privatises K numbers per step
instead of a whole update (DP-ZO): each image's K-vector is clipped to L2 norm ``clip`` (C),
the clipped vectors are summed, Gaussian noise N(0, (sigma C)^2) is added to each of the K
sums once, and the result is divided by the expected batch size. Adding or removing one image
moves the sum by at most C, so a step is the sampled Gaussian mechanism; everything computed
from the noisy K-vector (the decoder update, its seeds-and-scalars form) is post-processing.

Batches are Poisson-sampled (each training image independently with probability
``sample_rate``), which is what the accountants' subsampling amplification assumes. The batch,
the points and the noise are drawn from a secret generator (OS entropy), never from the run's
public seeds: anyone holding the seeds could otherwise subtract the noise.

Accounting uses Opacus' accountants (RDP by default, PRV as an option), per site, over every
step the site has released.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

# Opacus calls logging.basicConfig when imported (opacus.utils.module_utils), which gives the
# root logger a handler: then every line Flower logs, and every traceback, is printed twice.
# Its handler is removed again; our warnings and errors still reach stderr (Python's
# last-resort handler), once.
_ROOT_HANDLERS = list(logging.getLogger().handlers)
from opacus.accountants import create_accountant  # noqa: E402
from opacus.accountants.utils import get_noise_multiplier  # noqa: E402

for _handler in [h for h in logging.getLogger().handlers if h not in _ROOT_HANDLERS]:
    logging.getLogger().removeHandler(_handler)

AccountantName = Literal["rdp", "prv"]


@dataclass(frozen=True)
class DPConfig:
    """A site's DP settings: clip bound C, noise multiplier sigma, Poisson rate q, delta and
    the epsilon it may spend in the whole run (inf: account but never decline)."""

    clip: float = 1.0
    noise_multiplier: float = 1.0
    sample_rate: float = 0.1
    delta: float = 1e-5
    accountant: AccountantName = "rdp"
    epsilon_budget: float = math.inf

    def __post_init__(self) -> None:
        if not self.clip > 0:
            raise ValueError(f"DP clip bound must be > 0, got {self.clip}")
        if not self.noise_multiplier >= 0:
            raise ValueError(f"DP noise multiplier must be >= 0, got {self.noise_multiplier}")
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"DP sample rate must be in (0, 1], got {self.sample_rate}")
        if not 0 < self.delta < 1:
            raise ValueError(f"DP delta must be in (0, 1), got {self.delta}")
        if self.accountant not in ("rdp", "prv"):
            raise ValueError(f"DP accountant must be 'rdp' or 'prv', got {self.accountant!r}")
        if not self.epsilon_budget > 0:
            raise ValueError(f"DP epsilon budget must be > 0, got {self.epsilon_budget}")


def secret_rng() -> np.random.Generator:
    """A generator seeded from OS entropy: for DP noise and DP batches, never from seeds."""
    return np.random.default_rng()


def poisson_batch(n: int, sample_rate: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of a Poisson-sampled batch: each of n items independently with prob. q."""
    return np.flatnonzero(rng.random(n) < sample_rate)


def clip_rows(diffs: np.ndarray, clip: float) -> np.ndarray:
    """Each image's K-vector scaled to L2 norm <= clip, float64 [B, K].

    A row with any non-finite entry (a broken FM output) becomes zero: the image then adds
    nothing, and the sum's sensitivity stays ``clip``.
    """
    d = np.atleast_2d(np.asarray(diffs, dtype=np.float64))
    if d.ndim != 2:
        raise ValueError(f"diffs must be [B, K], got shape {np.shape(diffs)}")
    ok = np.isfinite(d).all(axis=1)
    d = np.where(ok[:, None], d, 0.0)
    norms = np.sqrt((d * d).sum(axis=1))
    scale = np.minimum(1.0, clip / np.maximum(norms, 1e-300))
    return d * scale[:, None]


def private_k_vector(
    diffs: np.ndarray,
    cfg: DPConfig,
    expected_batch: float,
    rng: np.random.Generator,
    k: int | None = None,
) -> np.ndarray:
    """The noisy mean K-vector a DP step releases: (sum of clipped rows + N(0, (sigma C)^2 I))
    / expected batch. ``k`` gives K when the batch is empty (then only noise is released)."""
    d = np.asarray(diffs, dtype=np.float64)
    k = d.shape[-1] if d.size else k
    if k is None:
        raise ValueError("an empty batch needs k, the number of perturbations")
    total = clip_rows(d, cfg.clip).sum(axis=0) if d.size else np.zeros(k)
    noise = rng.normal(0.0, cfg.noise_multiplier * cfg.clip, size=k)
    return (total + noise) / max(expected_batch, 1e-12)


class PrivacyLedger:
    """A site's privacy spent so far: an Opacus accountant over every released step."""

    def __init__(self, cfg: DPConfig, history: Sequence[Sequence[float]] = ()) -> None:
        self.cfg = cfg
        self._acc = create_accountant(mechanism=cfg.accountant)
        self._acc.history = [(float(s), float(q), int(n)) for s, q, n in history]

    @property
    def history(self) -> list[tuple[float, float, int]]:
        """(noise multiplier, sample rate, steps) entries: what a site persists across rounds."""
        return list(self._acc.history)

    @property
    def steps(self) -> int:
        return sum(int(n) for _, _, n in self._acc.history)

    def record(self, steps: int) -> None:
        """Account for ``steps`` more releases at the configured sigma and q."""
        sigma, q = self.cfg.noise_multiplier, self.cfg.sample_rate
        for _ in range(max(steps, 0)):  # Opacus merges equal (sigma, q) steps into one entry
            self._acc.step(noise_multiplier=sigma, sample_rate=q)

    def epsilon(self) -> float:
        if not self._acc.history:
            return 0.0
        if self.cfg.noise_multiplier == 0:
            return math.inf
        return float(self._acc.get_epsilon(delta=self.cfg.delta))

    def epsilon_after(self, steps: int) -> float:
        """The epsilon this site would have spent after ``steps`` more releases."""
        ahead = copy.deepcopy(self)
        ahead.record(steps)
        return ahead.epsilon()

    def can_afford(self, steps: int) -> bool:
        return self.epsilon_after(steps) <= self.cfg.epsilon_budget


def noise_for_epsilon(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: AccountantName = "rdp",
) -> float:
    """The smallest noise multiplier (Opacus' search) that keeps ``steps`` releases at rate
    ``sample_rate`` within (target_epsilon, delta); 0 for an infinite target (no noise)."""
    if math.isinf(target_epsilon):
        return 0.0
    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
        )
    )
