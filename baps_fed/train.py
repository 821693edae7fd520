"""One site's BAPS training: SPSA-GC / GEASS on the IP decoder against a black-box FM.

``spsa_step`` is one zeroth-order step (used by single-site training here and by a federated
site for its local steps): a batch, its K perturbations, ALL 2K prompted copies of the batch in
ONE FM call, per-image losses, the [B, K] loss differences, the update. Batches, points and
perturbations are functions of (seed, round, site, step) only, so a run resumed from a
checkpoint takes the same next step as one that never stopped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from baps_fed.data.points import PointMode, sample_point
from baps_fed.decoder import IPDecoder
from baps_fed.fm.base import BlackboxFM, QueryBudgetExceeded
from baps_fed.metrics import LOSSES
from baps_fed.prompting import apply_prompt, grey_levels
from baps_fed.zoo import (
    GeassConfig,
    SeedKey,
    SpsaConfig,
    SpsaState,
    StepInfo,
    apply_update,
    current_c,
    step_perturbations,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepConfig:
    batch_size: int = 4
    loss: str = "dice"
    point_mode: PointMode = "uniform"
    fm_retries: int = 2
    spsa: SpsaConfig = field(default_factory=SpsaConfig)
    geass: GeassConfig = field(default_factory=GeassConfig)


@dataclass(frozen=True)
class StepResult:
    theta: np.ndarray
    state: SpsaState
    info: StepInfo
    loss: float  # mean over the batch of (L+ + L-) / 2: the loss near theta
    fm_images: int
    failure: str | None = None  # why the step was skipped, when it was


def batch_rng(key: SeedKey, step: int) -> np.random.Generator:
    """The generator of a step's batch and points: independent of the perturbation stream."""
    return np.random.default_rng([key.master_seed, key.round, key.site, step, 0xBA7C])


def sample_batch(
    masks: np.ndarray, batch_size: int, rng: np.random.Generator, mode: PointMode
) -> tuple[np.ndarray, np.ndarray]:
    idx = rng.choice(len(masks), batch_size, replace=len(masks) < batch_size)
    points = np.stack([sample_point(masks[i], rng, mode) for i in idx])[:, None]
    return idx, points


def calibrate_c(decoder: IPDecoder, target_grey: float, seed: int = 0) -> float:
    """The c that moves the prompt by ``target_grey`` grey levels (mean |change| per pixel).

    The FM sees uint8 pixels: a perturbation under half a grey level vanishes in the cast and
    SPSA then sees L+ = L-. Measured on a fixed synthetic probe (noise images, central points),
    so it is data-independent and every site of a federation gets the same c.
    """
    rng = np.random.default_rng(seed)
    s = decoder.cfg.image_size
    images = rng.integers(0, 256, (4, s, s, 3), dtype=np.uint8)
    points = np.full((4, 1, 2), s / 2, np.float32) + rng.uniform(-s / 4, s / 4, (4, 1, 2))
    inputs = decoder.encode(images, points)
    theta = decoder.get_theta()
    delta = np.sign(rng.standard_normal(theta.size)).astype(np.float32) * 0.75
    eps = 1e-2
    change = decoder.prompts(np.stack([theta + eps * delta, theta]), inputs)
    per_unit = np.abs(change[0] - change[1]).mean() / eps
    if per_unit == 0:
        raise RuntimeError("the decoder's prompt does not respond to its weights; cannot set c")
    return float(target_grey / grey_levels(per_unit))


def spsa_step(
    decoder: IPDecoder,
    fm: BlackboxFM,
    images: np.ndarray,
    masks: np.ndarray,
    theta: np.ndarray,
    state: SpsaState,
    cfg: StepConfig,
    key: SeedKey,
) -> StepResult:
    """One SPSA-GC/GEASS step on a batch of this site's data; 2K x B images in one FM call."""
    k = cfg.spsa.sp_avg
    idx, points = sample_batch(masks, cfg.batch_size, batch_rng(key, state.step), cfg.point_mode)
    batch_images, batch_masks = images[idx], masks[idx]
    inputs = decoder.encode(batch_images, points)
    deltas = step_perturbations(key, state, cfg.spsa, theta.size)
    c = current_c(state, cfg.spsa, cfg.geass)
    thetas = np.concatenate([theta + c * deltas, theta - c * deltas]).astype(np.float32)
    prompts = decoder.prompts(thetas, inputs)  # [2K, B, 3, S, S]
    b = len(idx)
    prompted = apply_prompt(
        np.tile(batch_images, (2 * k, 1, 1, 1)), prompts.reshape(2 * k * b, *prompts.shape[2:])
    )
    logits, failure = _query(fm, prompted, np.tile(points, (2 * k, 1, 1)), cfg.fm_retries)
    if logits is None:
        diffs = np.full((b, k), np.nan)
        losses = np.full((2 * k, b), np.nan)
    else:
        losses = LOSSES[cfg.loss](logits.reshape(2 * k, b, *logits.shape[1:]), batch_masks[None])
        diffs = (losses[:k] - losses[k:]).T  # [B, K]: what DP clips per image
    new_theta, new_state, info = apply_update(theta, diffs, deltas, state, cfg.spsa, cfg.geass)
    if info.skipped and failure is None:
        failure = "every loss difference was NaN/Inf (FM returned non-finite logits)"
    if failure:
        logger.warning("step %d skipped: %s", state.step, failure)
    loss = float(np.nanmean(losses)) if np.isfinite(losses).any() else float("nan")
    return StepResult(new_theta, new_state, info, loss, len(prompted), failure)


def _query(
    fm: BlackboxFM, images: np.ndarray, points: np.ndarray, retries: int
) -> tuple[np.ndarray | None, str | None]:
    """The FM's logits, retrying failures; None and the reason when it keeps failing.

    A spent query budget is not a failure to retry: it propagates so the run can end cleanly.
    """
    error = None
    for _ in range(retries + 1):
        try:
            return fm.segment(images, points), None
        except QueryBudgetExceeded:
            raise
        except Exception as err:  # an FM behind an API can fail in any way; log and move on
            error = f"FM call failed: {type(err).__name__}: {err}"
            logger.warning(error)
    return None, error
