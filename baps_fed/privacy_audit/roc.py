"""How well an attack's scores separate members from non-members: ROC AUC, TPR at a fixed FPR,
the ROC curve, and percentile-bootstrap confidence intervals.

Higher score = "member". Ties count one half (AUC as the Mann-Whitney statistic). TPR at FPR f
is read at the strictest threshold whose FPR is at most f, so with n non-members an FPR below
1/n means "above every non-member" (the resolution a run of that size has). The bootstrap
resamples members and non-members separately (the audit fixes how many of each there are).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata


def _split(scores: np.ndarray, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s, m = np.asarray(scores, np.float64), np.asarray(members, bool)
    if s.shape != m.shape or s.ndim != 1:
        raise ValueError(f"scores {s.shape} and member flags {m.shape} must be equal 1-D shapes")
    if not m.any() or m.all():
        raise ValueError("need at least one member and one non-member to score an attack")
    if not np.isfinite(s).all():
        raise ValueError("attack scores must be finite")
    return s[m], s[~m]


def auc(scores: np.ndarray, members: np.ndarray) -> float:
    """P(score of a random member > score of a random non-member), ties counted 1/2."""
    pos, neg = _split(scores, members)
    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


def roc_curve(scores: np.ndarray, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at every distinct threshold, from (0, 0) to (1, 1)."""
    pos, neg = _split(scores, members)
    s = np.concatenate([pos, neg])
    flags = np.concatenate([np.ones(pos.size, bool), np.zeros(neg.size, bool)])
    order = np.argsort(-s, kind="stable")
    s, flags = s[order], flags[order]
    last = np.flatnonzero(np.append(s[1:] != s[:-1], True))  # the end of each group of ties
    tpr = np.cumsum(flags)[last] / pos.size
    fpr = np.cumsum(~flags)[last] / neg.size
    return np.concatenate([[0.0], fpr]), np.concatenate([[0.0], tpr])


def roc_counts(scores: np.ndarray, members: np.ndarray) -> dict[str, list[int]]:
    """The ROC curve as counts, as the report stores it: false positives among non-members
    (``fp``) and true positives among members (``tp``) at every threshold."""
    fpr, tpr = roc_curve(scores, members)
    m = np.asarray(members, bool)
    return {
        "fp": np.rint(fpr * (~m).sum()).astype(int).tolist(),
        "tp": np.rint(tpr * m.sum()).astype(int).tolist(),
    }


def tpr_at_fpr(scores: np.ndarray, members: np.ndarray, fpr: float) -> float:
    """The highest TPR of a threshold whose FPR is at most ``fpr``."""
    fprs, tprs = roc_curve(scores, members)
    return float(tprs[fprs <= fpr + 1e-12].max())


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float  # the 95 % (or ``level``) percentile-bootstrap interval
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class AttackScore:
    """An attack's AUC and its TPR at 1 % and 0.1 % FPR, each with its interval."""

    auc: Estimate
    tpr_1pct: Estimate
    tpr_01pct: Estimate
    members: int
    non_members: int

    def to_dict(self) -> dict:
        return {
            "auc": self.auc.to_dict(),
            "tpr_at_1pct_fpr": self.tpr_1pct.to_dict(),
            "tpr_at_0.1pct_fpr": self.tpr_01pct.to_dict(),
            "members": self.members,
            "non_members": self.non_members,
        }


def score_attack(
    scores: np.ndarray,
    members: np.ndarray,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    units: np.ndarray | None = None,
) -> AttackScore:
    """AUC, TPR at 1 % and 0.1 % FPR, each with a percentile-bootstrap interval.

    ``units`` (pooled audits: one candidate scored in several runs, a member in some): the
    bootstrap draws units, each with all its scores, since one unit's scores are not
    independent of each other."""
    pos, neg = _split(scores, members)
    rng = np.random.default_rng(seed)
    stats = {"auc": auc, "tpr1": lambda s, m: tpr_at_fpr(s, m, 0.01)}
    stats["tpr01"] = lambda s, m: tpr_at_fpr(s, m, 0.001)
    flags = np.concatenate([np.ones(pos.size, bool), np.zeros(neg.size, bool)])
    point = {k: f(np.concatenate([pos, neg]), flags) for k, f in stats.items()}
    draws: dict[str, list[float]] = {k: [] for k in stats}
    for s, m in _resamples(scores, members, units, resamples, rng, pos, neg, flags):
        for k, f in stats.items():
            draws[k].append(f(s, m))
    tail = (1 - level) / 2 * 100

    def estimate(k: str) -> Estimate:
        lo, hi = np.percentile(draws[k], [tail, 100 - tail]) if resamples else (np.nan, np.nan)
        return Estimate(point[k], float(lo), float(hi))

    return AttackScore(estimate("auc"), estimate("tpr1"), estimate("tpr01"), pos.size, neg.size)


def _resamples(
    scores: np.ndarray,
    members: np.ndarray,
    units: np.ndarray | None,
    n: int,
    rng: np.random.Generator,
    pos: np.ndarray,
    neg: np.ndarray,
    flags: np.ndarray,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(scores, member flags) of each bootstrap draw."""
    if units is None:  # members and non-members apart: the audit fixes how many of each
        for _ in range(n):
            yield np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)]), flags
        return
    scores, members = np.asarray(scores, np.float64), np.asarray(members, bool)
    names, index = np.unique(np.asarray(units), return_inverse=True)
    rows = [np.flatnonzero(index == u) for u in range(names.size)]
    done = 0
    while done < n:
        pick = np.concatenate([rows[u] for u in rng.integers(0, names.size, names.size)])
        if members[pick].all() or not members[pick].any():
            continue  # a draw without both kinds scores nothing (rare with a real audit)
        done += 1
        yield scores[pick], members[pick]
