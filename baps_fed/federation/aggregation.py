"""Aggregation rules: how the sites' updates of one round become one update (pure numpy).

Sites send ``delta_i = theta_i - theta_global``. ``mean`` weighs them by example counts (the
FedAvg pseudo-gradient); the robust rules (median, trimmed mean, Krum) resist a few bad sites,
and the scalar rules combine seed-mode scalars one by one. ``reject_reason`` is the update
guard: what no honest round can produce is never aggregated.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np


def weighted_mean(updates: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Mean of the updates weighted by example counts (float64 accumulation)."""
    if not updates:
        raise ValueError("no updates to aggregate")
    if len(updates) != len(weights):
        raise ValueError(f"{len(updates)} updates but {len(weights)} weights")
    w = np.asarray(weights, np.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"example counts must be >= 0 with a positive total, got {weights}")
    shape = np.shape(updates[0])
    if any(np.shape(u) != shape for u in updates):
        raise ValueError(f"updates differ in shape: {[np.shape(u) for u in updates]}")
    stacked = np.stack([np.asarray(u, np.float64) for u in updates])
    return np.tensordot(w / w.sum(), stacked, axes=1)


Aggregation = Literal[
    "mean", "median", "trimmed-mean", "krum", "multi-krum", "scalar-median", "scalar-trimmed-mean"
]


AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)


# these combine the sites' seed-mode scalars, not their updates (``combine_scalars``)
SCALAR_AGGREGATIONS = ("scalar-median", "scalar-trimmed-mean")


def aggregate_updates(
    updates: list[np.ndarray],
    weights: list[float],
    method: Aggregation = "mean",
    trim: float = 0.2,
    malicious: int = 1,
) -> np.ndarray:
    """The sites' combined update: the example-weighted mean, or, robust to a few bad sites,
    the coordinate-wise median or trimmed mean (``trim`` of the sites cut at each end, at least
    one once there are three sites, since a federation of a few hospitals is the usual case and
    ``floor(0.2 * 4) = 0`` would cut nobody; unweighted: a site could claim any example count).
    ``krum`` takes the one update closest to its neighbours, ``multi-krum`` the weighted mean of
    the n - ``malicious`` closest ones (Flower's Krum selection, Blanchard et al. 2017)."""
    if method == "mean":
        return weighted_mean(updates, weights)
    if method in ("krum", "multi-krum"):
        keep = 1 if method == "krum" else max(1, len(updates) - malicious)
        chosen = krum_select(updates, malicious, keep)
        return weighted_mean([updates[i] for i in chosen], [weights[i] for i in chosen])
    stack = np.stack([np.asarray(u, np.float64) for u in updates])
    if method == "median":
        return np.median(stack, axis=0).astype(np.float32)
    if method == "trimmed-mean":
        cut = trimmed_count(len(updates), trim)
        ordered = np.sort(stack, axis=0)
        return ordered[cut : len(updates) - cut].mean(axis=0).astype(np.float32)
    if method in SCALAR_AGGREGATIONS:
        raise ValueError(f"{method} combines seed-mode scalars (combine_scalars), not updates")
    raise ValueError(f"aggregation must be one of {'|'.join(AGGREGATIONS)}, got {method!r}")


def combine_scalars(scalars: list[np.ndarray], method: str, trim: float = 0.2) -> np.ndarray:
    """One [steps, K] array from the sites' [steps, K] loss-difference scalars, scalar by
    scalar: the median or trimmed mean over sites. Valid only when every site measured along
    the same perturbations (run config ``shared-perturbations``). Non-finite scalars are left
    out (a broken FM, a NaN attack); a scalar no site measured stays NaN, which the replay
    treats as a skipped estimate, as at a site."""
    if not scalars:
        raise ValueError("no scalars to combine")
    if any(np.shape(s) != np.shape(scalars[0]) for s in scalars):
        raise ValueError(f"scalars differ in shape: {[np.shape(s) for s in scalars]}")
    stack = np.stack([np.asarray(s, np.float64) for s in scalars])
    out = np.full(stack.shape[1:], np.nan)
    for idx in np.ndindex(*stack.shape[1:]):
        column = stack[(slice(None), *idx)]
        values = np.sort(column[np.isfinite(column)])
        if values.size == 0:
            continue
        if method == "scalar-median":
            out[idx] = np.median(values)
        elif method == "scalar-trimmed-mean":
            cut = trimmed_count(values.size, trim)
            out[idx] = values[cut : values.size - cut].mean()
        else:
            raise ValueError(f"scalar aggregation must be one of {SCALAR_AGGREGATIONS}")
    return out.astype(np.float32)


def krum_select(updates: list[np.ndarray], malicious: int, keep: int) -> list[int]:
    """Indices of the ``keep`` updates with the lowest Krum scores (Blanchard et al. 2017), in
    the order Flower's Krum/MultiKrum strategies select them: an update's score is the sum of
    its squared L2 distances to its n - f - 2 nearest other updates (at least one).
    tests/federation checks the choice against ``flwr.serverapp.strategy.multikrum``."""
    flat = np.stack([np.asarray(u, np.float64).ravel() for u in updates])
    sq = np.square(flat).sum(axis=1)
    distances = sq[:, None] + sq[None, :] - 2 * flat @ flat.T
    np.fill_diagonal(distances, np.inf)  # an update is not its own neighbour
    nearest = max(1, len(updates) - malicious - 2)
    scores = np.sort(distances, axis=1)[:, :nearest].sum(axis=1)
    return [int(i) for i in np.argsort(scores)[:keep]]


def trimmed_count(n_sites: int, trim: float) -> int:
    """How many sites a trimmed mean cuts at each end."""
    if not 0 <= trim < 0.5:
        raise ValueError(f"trim must be in [0, 0.5), got {trim}")
    cut = int(np.floor(trim * n_sites))
    if trim > 0 and n_sites >= 3:
        cut = max(cut, 1)
    return min(cut, (n_sites - 1) // 2)


def update_bound(local_steps: int, lr: float, update: str, dim: int) -> float:
    """The largest |coordinate| an honest round can produce: sign steps move each coordinate
    by exactly lr, normalised steps by at most lr * sqrt(dim); raw steps have no bound."""
    if update == "sign":
        return local_steps * lr * (1 + 1e-5)
    if update == "normalized":
        return local_steps * lr * float(np.sqrt(dim)) * (1 + 1e-5)
    return float("inf")


def reject_reason(update: np.ndarray, bound: float) -> str | None:
    """Why an update must not be aggregated (None: it may)."""
    u = np.asarray(update)
    if not np.all(np.isfinite(u)):
        return f"{int((~np.isfinite(u)).sum())} non-finite values"
    top = float(np.abs(u).max()) if u.size else 0.0
    if top > bound:
        return f"a coordinate of {top:.4g}, beyond the {bound:.4g} an honest round can reach"
    return None
