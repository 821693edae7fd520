"""Seeded perturbations: every Delta is a pure function of (master seed, round, site, step, k).

This is what makes seed-and-scalar uploads, replay and audit possible: the same Delta on any
machine, from the seed alone (DESIGN.md's contract).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

_MAX_SEED = 2**64


@dataclass(frozen=True)
class SeedKey:
    """What names a site's perturbations in one round; with (step, k) it fixes every Delta.

    ``step0`` set: the round's perturbations are shared by every site (site part 0) and
    indexed by the step within the round (``state.step - step0``), so the K scalars of local
    step j mean the same directions at every site and can be combined scalar by scalar
    (coordinator ``scalar-median``). ``site`` still seeds the site's own batches.
    """

    master_seed: int
    round: int
    site: int
    step0: int | None = None


def seed_words(parts: Iterable[int]) -> list[int]:
    """Each part as exactly two 32-bit words.

    SeedSequence splits large ints into a variable number of words, so [2**32, 0] and [0, 1, 0]
    collide; fixed width keeps (master_seed, round, site, step, k) -> seed injective.
    """
    words: list[int] = []
    for name, value in zip(("master_seed", "round", "site", "step", "k"), parts, strict=True):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"perturbation seed part {name} must be an int, got {value!r}")
        value = int(value)
        if not 0 <= value < _MAX_SEED:
            raise ValueError(f"perturbation seed part {name}={value} must be in [0, 2**64)")
        words += [value & 0xFFFFFFFF, value >> 32]
    return words


def perturbation(
    master_seed: int, round: int, site: int, step: int, k: int, dim: int
) -> np.ndarray:
    """Delta for one (master_seed, round, site, step, k): float32 [dim], |entries| ~ U[0.5, 1],
    random signs (BAPS/BlackVIP), k counted from 0.

    Drawn from the raw bit stream of PCG64 seeded by SeedSequence. NumPy keeps that stream
    identical on every platform (and, by its RNG policy, across versions, unlike Generator's
    distribution methods), which is what lets a coordinator replay or audit a site's update
    from seeds alone; a golden-value test guards it. The magnitude uses the top 53 bits of one
    word (as Generator.random does), the sign the lowest bit of another.
    """
    if dim < 1:
        raise ValueError(f"perturbation dim must be >= 1, got {dim}")
    seq = np.random.SeedSequence(seed_words((master_seed, round, site, step, k)))
    raw = np.random.PCG64(seq).random_raw(2 * dim)
    unit = (raw[:dim] >> np.uint64(11)).astype(np.float64) * 2.0**-53  # [0, 1)
    sign = np.where(raw[dim:] & np.uint64(1), 1.0, -1.0)
    return (sign * (0.5 + 0.5 * unit)).astype(np.float32)


def perturbations(
    master_seed: int, round: int, site: int, step: int, K: int, dim: int
) -> np.ndarray:
    """Deltas for k = 0..K-1 of one step: float32 [K, dim]."""
    if K < 1:
        raise ValueError(f"K (sp_avg) must be >= 1, got {K}")
    return np.stack([perturbation(master_seed, round, site, step, k, dim) for k in range(K)])
