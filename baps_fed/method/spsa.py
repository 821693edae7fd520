"""Zeroth-order optimisation of the decoder: SPSA-GC and SPSA-GEASS on seeded perturbations.

Pure numpy, no I/O, no torch: the same code runs at a site (training) and at the coordinator
(replaying a site's update from seeds and scalars, or auditing it). Every function returns new
arrays and a new state; inputs are never mutated.

One training step (``fm_losses(W)`` is the caller's: per-image losses [B, K] of the FM for the
K decoder weight vectors in W)::

    deltas = step_perturbations(key, state, cfg, w.size)   # [K, dim], from the seed alone
    c = current_c(state, cfg, geass)                        # GEASS may have raised it
    lp = fm_losses(w + c * deltas)                          # K FM calls per image
    lm = fm_losses(w - c * deltas)                          # K more
    diffs = lp - lm                                         # [B, K]; DP clips/noises these
    w, state, info = apply_update(w, diffs, deltas, state, cfg, geass)

Replaying a site: ``replay(w, [diffs_0, diffs_1, ...], state, cfg, geass, key)`` gives the
same w bit for bit (same platform), because the update depends only on (cfg, geass, state,
key, diffs), and passing the image-averaged K-vector (``average_diffs``) instead of [B, K]
gives the identical update.

Conventions and choices:
- Indexing: ``state.step`` counts from 0 and advances on every call, skipped steps included.
  It is the ``step`` of the perturbation seed and the k of the schedules: c_k = c / (k+1)^gamma
  (BlackVIP's 1-based k), BlackVIP lr a / (k+1+o)^alpha, BAPS lr a * 0.33^floor(k/300) (steps
  0..299 use a).
- ``update``: "raw" is SPSA-GC; "sign" moves every coordinate by exactly lr; "normalized"
  rescales the step to RMS 1 (step / ||step|| * sqrt(dim)), so lr is again the per-coordinate
  step size (||dw|| = lr * sqrt(dim)). Measured on this project's calibration, sign/normalised
  updates make the needed step sizes easy to reach (reference/BAPS.md).
- The published code multiplied c by 10 for good whenever the estimate was exactly zero. That
  makes c grow without bound (with uint8 prompts, tiny c often gives exact zeros), so it is off
  by default; ``SpsaConfig.zero_estimate_c_boost = 10.0`` reproduces it, persisted in
  ``state.c_mult``.
- Arithmetic is elementwise float64 with no BLAS (its results can depend on thread count), then
  cast to float32 for w.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from baps_fed.method.perturbations import SeedKey, perturbations

# ---------------------------------------------------------------------------------------------
# Configuration and state
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpsaConfig:
    """SPSA-GC settings; defaults are the BAPS code's (BlackVIP's where BAPS has none)."""

    sp_avg: int = 5  # K perturbations per step (2K FM calls per image)
    c: float = 0.01  # perturbation scale c
    gamma: float = 0.1  # c_k = c / (k+1)^gamma
    schedule: Literal["baps", "blackvip", "constant"] = "baps"
    lr: float = 1.0  # a: BAPS used 1 for its conv decoder, BlackVIP 0.01
    lr_decay: float = 0.33  # baps: a * lr_decay^floor(k / lr_decay_every)
    lr_decay_every: int = 300
    o: float = 1.0  # blackvip: a / (k+1+o)^alpha
    alpha: float = 0.4
    beta: float = 0.4  # gradient-correction momentum (BAPS 0.4, BlackVIP 0.9)
    update: Literal["raw", "sign", "normalized"] = "raw"
    zero_estimate_c_boost: float = 1.0  # published quirk: 10.0; 1.0 = off (see module doc)

    def __post_init__(self) -> None:
        if self.sp_avg < 1:
            raise ValueError(f"SpsaConfig.sp_avg must be >= 1, got {self.sp_avg}")
        if not self.c > 0:
            raise ValueError(f"SpsaConfig.c must be > 0, got {self.c}")
        if not self.lr >= 0:
            raise ValueError(f"SpsaConfig.lr must be >= 0, got {self.lr}")
        if self.lr_decay_every < 1:
            raise ValueError(f"SpsaConfig.lr_decay_every must be >= 1, got {self.lr_decay_every}")
        if self.schedule not in ("baps", "blackvip", "constant"):
            raise ValueError(f"SpsaConfig.schedule must be baps|blackvip|constant: {self.schedule}")
        if self.update not in ("raw", "sign", "normalized"):
            raise ValueError(f"SpsaConfig.update must be raw|sign|normalized: {self.update}")
        if not self.zero_estimate_c_boost >= 1:
            raise ValueError("SpsaConfig.zero_estimate_c_boost must be >= 1 (1 = off)")


@dataclass(frozen=True)
class GeassConfig:
    """SPSA-GEASS: after `patience` consecutive steps with ||g|| < threshold_per_param * dim,
    strike for `cooldown` steps with lr * eta1, c * eta2 and no momentum (BAPS code: 0.001,
    10, 2)."""

    enabled: bool = False
    threshold_per_param: float = 0.001
    patience: int = 10
    cooldown: int = 2
    eta1: float = 5.0  # lr multiplier while striking; not published: to be chosen by measurement
    eta2: float = 2.0  # c multiplier while striking; not published: to be chosen by measurement

    def __post_init__(self) -> None:
        if self.patience < 1 or self.cooldown < 1:
            raise ValueError("GeassConfig.patience and cooldown must be >= 1")
        if not (self.eta1 > 0 and self.eta2 > 0):
            raise ValueError("GeassConfig.eta1 and eta2 must be > 0")


@dataclass(frozen=True, eq=False)
class SpsaState:
    """Optimiser state between steps; everything a checkpoint needs to resume exactly.

    momentum is None until the first non-skipped step (then m = g, as in BlackVIP/BAPS).
    """

    step: int = 0
    momentum: np.ndarray | None = None  # float64 [dim], read-only
    low_count: int = 0  # consecutive low-norm steps (GEASS)
    strike_left: int = 0  # strike steps still to run (GEASS)
    c_mult: float = 1.0  # permanent c multiplier (only the zero-estimate option changes it)

    def to_dict(self) -> dict[str, Any]:
        """numpy arrays and Python numbers only (np.savez / torch.save friendly)."""
        d: dict[str, Any] = {
            "step": int(self.step),
            "low_count": int(self.low_count),
            "strike_left": int(self.strike_left),
            "c_mult": float(self.c_mult),
        }
        if self.momentum is not None:
            d["momentum"] = np.array(self.momentum, dtype=np.float64)
        return d

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The one stored form: numpy arrays only (0-d for the counters), for np.savez, a
        Flower ArrayRecord or a torch checkpoint alike; ``from_dict`` reads it back."""
        return {k: np.asarray(v) for k, v in self.to_dict().items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SpsaState:
        m = d.get("momentum")
        return cls(
            step=int(d["step"]),
            momentum=None if m is None else _frozen(np.array(m, dtype=np.float64)),
            low_count=int(d["low_count"]),
            strike_left=int(d["strike_left"]),
            c_mult=float(d["c_mult"]),
        )


@dataclass(frozen=True)
class StepInfo:
    """What happened in one step, for logs and metrics."""

    step: int
    grad_norm: float  # ||g||; nan when skipped
    lr: float  # effective learning rate used
    c: float  # effective perturbation scale used
    striking: bool
    n_used: int  # perturbations k with a finite averaged diff
    skipped: bool  # no usable diff: w and momentum unchanged


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


# ---------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------


def c_at(cfg: SpsaConfig, step: int) -> float:
    """Schedule c_k = c / (step+1)^gamma, step counted from 0 (no GEASS, no c_mult)."""
    return cfg.c / (step + 1) ** cfg.gamma


def lr_at(cfg: SpsaConfig, step: int) -> float:
    """Scheduled learning rate at step (from 0), without GEASS."""
    if cfg.schedule == "baps":
        return cfg.lr * cfg.lr_decay ** (step // cfg.lr_decay_every)
    if cfg.schedule == "blackvip":
        return cfg.lr / (step + 1 + cfg.o) ** cfg.alpha
    return cfg.lr


def _striking(state: SpsaState, geass: GeassConfig) -> bool:
    return geass.enabled and state.strike_left > 0


def current_c(state: SpsaState, cfg: SpsaConfig, geass: GeassConfig | None = None) -> float:
    """The perturbation scale the loop must use for this step (apply_update assumes it)."""
    geass = geass or GeassConfig()
    c = c_at(cfg, state.step) * state.c_mult
    return c * geass.eta2 if _striking(state, geass) else c


def current_lr(state: SpsaState, cfg: SpsaConfig, geass: GeassConfig | None = None) -> float:
    geass = geass or GeassConfig()
    lr = lr_at(cfg, state.step)
    return lr * geass.eta1 if _striking(state, geass) else lr


def step_perturbations(key: SeedKey, state: SpsaState, cfg: SpsaConfig, dim: int) -> np.ndarray:
    """The [K, dim] Deltas of the current step: the loop and replay must both use these."""
    if key.step0 is None:
        site, step = key.site, state.step
    else:
        site, step = 0, state.step - key.step0
    return perturbations(key.master_seed, key.round, site, step, cfg.sp_avg, dim)


# ---------------------------------------------------------------------------------------------
# Estimation and update
# ---------------------------------------------------------------------------------------------


def average_diffs(diffs: np.ndarray) -> np.ndarray:
    """Mean over images of (L+ - L-) per k: float64 [K], nan where no image is finite.

    Non-finite (image, k) entries are ignored one by one, so a broken image or a broken
    perturbation costs only its own entries. Idempotent on [K] input, so a site can send this
    K-vector and the coordinator's replay gives the same update.
    """
    d = np.asarray(diffs, dtype=np.float64)
    if d.ndim == 1:
        d = d[None]
    if d.ndim != 2:
        raise ValueError(f"diffs must be [B, K] or [K], got shape {np.shape(diffs)}")
    ok = np.isfinite(d)
    n = ok.sum(0)
    total = np.where(ok, d, 0.0).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def _estimate64(diffs: np.ndarray, deltas: np.ndarray, c_k: float) -> tuple[np.ndarray, int, bool]:
    """g in float64, n_used, and whether every used diff was exactly zero."""
    deltas = np.asarray(deltas)
    if deltas.ndim != 2:
        raise ValueError(f"deltas must be [K, dim], got shape {deltas.shape}")
    d = average_diffs(diffs)
    if d.shape[0] != deltas.shape[0]:
        raise ValueError(f"diffs have K={d.shape[0]} but deltas have K={deltas.shape[0]}")
    used = np.flatnonzero(np.isfinite(d))
    g = np.zeros(deltas.shape[1], dtype=np.float64)
    for k in used:  # elementwise, in k order: bit-reproducible
        g += (d[k] / (2.0 * c_k)) / deltas[k].astype(np.float64)
    if used.size:
        g /= used.size
    return g, int(used.size), bool(used.size) and not np.any(d[used])


def estimate_gradient(diffs: np.ndarray, deltas: np.ndarray, c_k: float) -> tuple[np.ndarray, int]:
    """SPSA estimate g = mean_k (d_k / 2c_k) / Delta_k: float32 [dim], and n_used.

    d_k is the image-average of diffs[:, k] (see average_diffs); samples with no finite d_k
    are dropped; if none remain g is zero and n_used is 0 (the caller skips the step).
    """
    g, n_used, _ = _estimate64(diffs, deltas, c_k)
    return g.astype(np.float32), n_used


def _norm(x: np.ndarray) -> float:
    return float(np.sqrt(np.sum(x * x)))


def _shape_step(step: np.ndarray, update: str) -> np.ndarray:
    if update == "sign":
        return np.sign(step)
    if update == "normalized":
        n = _norm(step)
        return step * (np.sqrt(step.size) / n) if n > 0 else np.zeros_like(step)
    return step


def apply_update(
    w: np.ndarray,
    diffs: np.ndarray,
    deltas: np.ndarray,
    state: SpsaState,
    cfg: SpsaConfig,
    geass: GeassConfig | None = None,
) -> tuple[np.ndarray, SpsaState, StepInfo]:
    """One SPSA-GC (+GEASS) step: returns (w_new float32, new state, info).

    Assumes L+/L- were evaluated at w +/- current_c(state, cfg, geass) * deltas. Normal step:
    m = g on the first step, else m = beta m + g; step = g + beta m. Striking step: step = g,
    momentum left as it was (the strike's estimates, taken at a larger c, do not enter it).
    Then w <- w - lr * shape(step).
    """
    geass = geass or GeassConfig()
    w, deltas = np.asarray(w), np.asarray(deltas)
    if deltas.shape[-1] != w.size:
        raise ValueError(f"deltas have dim {deltas.shape[-1]} but w has {w.size} entries")
    striking = _striking(state, geass)
    c, lr = current_c(state, cfg, geass), current_lr(state, cfg, geass)
    g, n_used, all_zero = _estimate64(diffs, deltas, c)
    next_step = state.step + 1
    if n_used == 0:
        info = StepInfo(state.step, float("nan"), lr, c, striking, 0, True)
        return w.astype(np.float32, copy=True), replace(state, step=next_step), info

    grad_norm = _norm(g)
    if striking:
        m, step = state.momentum, g
        low_count, strike_left = 0, state.strike_left - 1
    else:
        m = g.copy() if state.momentum is None else cfg.beta * state.momentum + g
        step = g + cfg.beta * m
        m = _frozen(m)
        low_count, strike_left = _geass_count(state, geass, grad_norm, w.size)
    c_mult = state.c_mult * cfg.zero_estimate_c_boost if all_zero else state.c_mult

    w_new = (w.astype(np.float64).ravel() - lr * _shape_step(step, cfg.update)).astype(np.float32)
    new_state = SpsaState(next_step, m, low_count, strike_left, c_mult)
    info = StepInfo(state.step, grad_norm, lr, c, striking, n_used, False)
    return w_new.reshape(w.shape), new_state, info


def _geass_count(
    state: SpsaState, geass: GeassConfig, grad_norm: float, dim: int
) -> tuple[int, int]:
    """(low_count, strike_left) after a normal step: count low norms, strike at patience."""
    if not geass.enabled:
        return 0, 0
    if grad_norm >= geass.threshold_per_param * dim:
        return 0, 0
    low = state.low_count + 1
    return (0, geass.cooldown) if low >= geass.patience else (low, 0)


def replay(
    w: np.ndarray,
    diffs_per_step: Iterable[np.ndarray],
    state: SpsaState,
    cfg: SpsaConfig,
    geass: GeassConfig | None,
    key: SeedKey,
) -> tuple[np.ndarray, SpsaState]:
    """Rebuild a site's weights from its start (w, state), its seed key and its diffs per step."""
    for diffs in diffs_per_step:
        deltas = step_perturbations(key, state, cfg, np.asarray(w).size)
        w, state, _ = apply_update(w, diffs, deltas, state, cfg, geass)
    return w, state
