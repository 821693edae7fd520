"""The epsilon lower bound of a one-run audit (Steinke, Nasr and Jagielski, NeurIPS 2023).

The audit's game: m canaries, each included in the training data independently with
probability 1/2; after one run the auditor guesses "in" or "out" for r of them (abstaining on
the rest) and W of its guesses are right. Their Theorem 3.1: if the mechanism is (eps, delta)-DP
with respect to adding or removing one canary, then for every v

    P[W >= v] <= P[B >= v] + 2 m delta * max_{i = 1..v} P[v > B >= v - i] / i,
    B ~ Binomial(r, e^eps / (1 + e^eps)),

i.e. with delta = 0 each guess is right with probability at most that of eps-randomised
response. So a count of v correct guesses refutes every eps whose right-hand side is at most
beta, and the largest such eps is a lower bound on the mechanism's true epsilon at confidence
1 - beta. A correct mechanism gives a bound above its accountant's epsilon with probability at
most beta.

The bound can only certify what the number of guesses allows: all r guesses right gives
``ceiling(r, beta)`` (about ln(r / ln(1/beta)) with delta = 0), whatever the mechanism.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def _check(canaries: int, guesses: int, correct: int, delta: float) -> None:
    if not 0 <= correct <= guesses <= canaries:
        raise ValueError(
            f"need 0 <= correct ({correct}) <= guesses ({guesses}) <= canaries ({canaries})"
        )
    if not 0 <= delta < 1:
        raise ValueError(f"delta must be in [0, 1), got {delta}")


def p_value(canaries: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """The probability, under an (epsilon, delta)-DP mechanism, of ``correct`` or more right
    guesses out of ``guesses`` (Theorem 3.1's right-hand side, capped at 1)."""
    _check(canaries, guesses, correct, delta)
    if correct == 0:
        return 1.0
    p = 1.0 / (1.0 + math.exp(-epsilon))  # e^eps / (1 + e^eps), overflow-free
    tail = float(stats.binom.sf(correct - 1, guesses, p))  # P[B >= correct]
    if delta == 0:
        return min(1.0, tail)
    i = np.arange(1, correct + 1)
    # P[correct > B >= correct - i] = P[B <= correct - 1] - P[B <= correct - i - 1]
    band = stats.binom.cdf(correct - 1, guesses, p) - stats.binom.cdf(correct - i - 1, guesses, p)
    return min(1.0, tail + 2 * canaries * delta * float(np.max(band / i)))


def epsilon_lower_bound(
    canaries: int, guesses: int, correct: int, delta: float = 0.0, beta: float = 0.05
) -> float:
    """The largest epsilon the audit refutes at confidence 1 - beta (0 when it refutes none):
    the mechanism is not (eps, delta)-DP for any smaller eps, unless an event of probability
    beta happened. Bisection on p_value, which grows with epsilon."""
    if not 0 < beta < 1:
        raise ValueError(f"beta must be in (0, 1), got {beta}")
    _check(canaries, guesses, correct, delta)

    def refuted(eps: float) -> bool:
        return p_value(canaries, guesses, correct, eps, delta) <= beta

    if not refuted(0.0):
        return 0.0
    lo, hi = 0.0, 1.0
    while refuted(hi):
        lo, hi = hi, 2 * hi
        if hi > 1e3:  # p_value underflows long before: every eps is refuted
            return math.inf
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if refuted(mid) else (lo, mid)
    return lo


def ceiling(guesses: int, beta: float = 0.05) -> float:
    """The most any audit with this many guesses can certify: every guess right, delta 0,
    so p_value = p^guesses and eps = logit(beta^(1/guesses))."""
    if guesses < 1:
        return 0.0
    p = beta ** (1.0 / guesses)
    return math.log(p / (1 - p))
