"""One BAPS step: SPSA-GC / GEASS on the IP decoder against a black-box FM.

``spsa_step`` is one zeroth-order step (used by single-site training and by a federated site
for its local steps): a batch, its K perturbations, ALL 2K prompted copies of the batch in
ONE FM call, per-image losses, the [B, K] loss differences, the update. Batches, prompts and
perturbations are functions of (seed, round, site, step) only, so a run resumed from a
checkpoint takes the same next step as one that never stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from baps_fed.data.prompts import PooledPrompting, PromptConfig, Prompts, sample_prompts
from baps_fed.evaluation.metrics import LOSSES
from baps_fed.fm.contract import BlackboxFM
from baps_fed.fm.errors import FMTransientError
from baps_fed.method.dp import DPConfig, poisson_batch, private_k_vector, secret_rng
from baps_fed.method.ip_decoder import IPDecoder
from baps_fed.method.perturbations import SeedKey, seed_words
from baps_fed.method.spsa import (
    GeassConfig,
    SpsaConfig,
    SpsaState,
    StepInfo,
    apply_update,
    average_diffs,
    current_c,
    step_perturbations,
)
from baps_fed.method.visual_prompt import apply_prompt, grey_levels

logger = logging.getLogger(__name__)


# c is set so that it moves the prompt by this many grey levels (``calibrate_c``)
TARGET_GREY = 3.0
# c of the box refiner alone: what calibration gives the basis decoder (0.039 at 128 px,
# 0.037 at 256), so one c serves both parts of adapt="both"; it moves a side by a few per cent
# of the box's size, a pixel or more on a 256 px FM input that truncates boxes to integers
BOX_C = 0.04


def measured_spsa() -> SpsaConfig:
    """The step rule measured best on the synthetic modalities (docs/benchmarks.md): sign
    updates of 0.02 at a constant rate. ``SpsaConfig``'s own defaults are the paper's rule."""
    return SpsaConfig(lr=0.02, update="sign", schedule="constant")


@dataclass(frozen=True)
class StepConfig:
    batch_size: int = 8
    loss: str = "dice"
    # a pooled arm's PooledPrompting draws each case as its own site does
    prompt: PromptConfig | PooledPrompting = field(default_factory=PromptConfig)
    fm_retries: int = 2
    spsa: SpsaConfig = field(default_factory=measured_spsa)
    geass: GeassConfig = field(default_factory=GeassConfig)
    # DP on the K loss differences (baps_fed/privacy.py); batches are then Poisson-sampled at
    # dp.sample_rate and batch_size is unused
    dp: DPConfig | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class StepResult:
    theta: np.ndarray
    state: SpsaState
    info: StepInfo
    loss: float  # mean over the batch of (L+ + L-) / 2: the loss near theta
    fm_images: int
    failure: str | None = None  # why the step was skipped, when it was
    # the K-vector the update was computed from (noisy under DP): with the seeds, all that
    # is needed to replay the step (zoo.replay)
    k_vector: np.ndarray | None = None


def batch_rng(key: SeedKey, step: int) -> np.random.Generator:
    """The generator of a step's batch and prompts: independent of the perturbation stream
    (same fixed-width seed words as the perturbations, plus one more word)."""
    return np.random.default_rng(seed_words((key.master_seed, key.round, key.site, step, 0)) + [1])


def sample_batch(
    masks: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    prompt: PromptConfig | PooledPrompting,
) -> tuple[np.ndarray, Prompts]:
    idx = rng.choice(len(masks), batch_size, replace=len(masks) < batch_size)
    return idx, sample_prompts(masks, idx, rng, prompt)


def calibrate_c(decoder: IPDecoder, target_grey: float, seed: int = 0) -> float:
    """The c that moves the prompt by ``target_grey`` grey levels (mean |change| per pixel).

    The FM sees uint8 pixels: a perturbation under half a grey level vanishes in the cast and
    SPSA then sees L+ = L-. Measured on a fixed synthetic probe (noise images, central points),
    so it is data-independent and every site of a federation gets the same c (whatever prompt
    kind it trains with: the point probe sets the scale of the weights).
    """
    if decoder.cfg.adapt == "box":
        return BOX_C
    rng = np.random.default_rng(seed)
    s = decoder.cfg.image_size
    images = rng.integers(0, 256, (4, s, s, 3), dtype=np.uint8)
    points = np.full((4, 1, 2), s / 2, np.float32) + rng.uniform(-s / 4, s / 4, (4, 1, 2))
    inputs = decoder.encode(images, Prompts(points=points.astype(np.float32)))
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
    """One SPSA-GC/GEASS step on a batch of this site's data; 2K x B images in one FM call.

    Under DP (``cfg.dp``) the batch is Poisson-sampled from a secret generator and the update
    is computed from the clipped, noised K-vector alone (``privacy.private_k_vector``)."""
    k = cfg.spsa.sp_avg
    dp = cfg.dp
    rng = secret_rng() if dp is not None else batch_rng(key, state.step)
    if dp is None:
        idx, prompts = sample_batch(masks, cfg.batch_size, rng, cfg.prompt)
    else:
        idx = poisson_batch(len(masks), dp.sample_rate, rng)
        prompts = sample_prompts(masks, idx, rng, cfg.prompt)
    deltas = step_perturbations(key, state, cfg.spsa, theta.size)
    b = len(idx)
    diffs, losses, failure, n_images = np.zeros((0, k)), np.zeros((2 * k, 0)), None, 0
    if b:
        batch_images, batch_masks = images[idx], masks[idx]
        inputs = decoder.encode(batch_images, prompts)
        c = current_c(state, cfg.spsa, cfg.geass)
        thetas = np.concatenate([theta + c * deltas, theta - c * deltas]).astype(np.float32)
        visual = decoder.prompts(thetas, inputs)  # [2K, B, 3, S, S]
        prompted = apply_prompt(
            np.tile(batch_images, (2 * k, 1, 1, 1)),
            visual.reshape(2 * k * b, *visual.shape[2:]),
        )
        n_images = len(prompted)
        sent = decoder.refine(thetas, inputs, prompts, batch_images.shape[1:3])  # boxes moved
        logits, failure = _query(fm, prompted, sent, cfg.fm_retries)
        if logits is None:
            diffs = np.full((b, k), np.nan)
            losses = np.full((2 * k, b), np.nan)
        else:
            losses = LOSSES[cfg.loss](
                logits.reshape(2 * k, b, *logits.shape[1:]), batch_masks[None]
            )
            diffs = (losses[:k] - losses[k:]).T  # [B, K]: what DP clips per image
    if dp is not None:
        k_vector = private_k_vector(diffs, dp, dp.sample_rate * len(masks), rng, k=k)
    else:
        k_vector = average_diffs(diffs)
    # float32, as a seed-and-scalar upload carries it: the site and a replay of its upload
    # then compute the update from the very same numbers
    k_vector = k_vector.astype(np.float32)
    new_theta, new_state, info = apply_update(theta, k_vector, deltas, state, cfg.spsa, cfg.geass)
    if info.skipped and failure is None:
        failure = "every loss difference was NaN/Inf (FM returned non-finite logits)"
    if failure:
        logger.warning("step %d skipped: %s", state.step, failure)
    loss = float(np.nanmean(losses)) if np.isfinite(losses).any() else float("nan")
    return StepResult(new_theta, new_state, info, loss, n_images, failure, k_vector)


def _is_transient(err: Exception) -> bool:
    """Worth retrying: the network or the service, not the query, the budget or the caller."""
    return isinstance(err, (ConnectionError, TimeoutError, FMTransientError))


def _query(
    fm: BlackboxFM, images: np.ndarray, prompts: Prompts, retries: int
) -> tuple[np.ndarray | None, str | None]:
    """The FM's logits, retrying transient failures; None and the reason when they persist.

    A spent budget, a refused token or a malformed query is not retried: it propagates, since
    no later step would fare better.
    """
    error = None
    for _ in range(retries + 1):
        try:
            return fm.segment(images, **prompts.query()), None
        except Exception as err:
            if not _is_transient(err):
                raise
            error = f"FM call failed: {type(err).__name__}: {err}"
            logger.warning(error)
    return None, error


def prompt_fn(
    decoder: IPDecoder, theta: np.ndarray
) -> Callable[[np.ndarray, Prompts], tuple[np.ndarray, Prompts]]:
    """(images, prompts) -> the prompted uint8 images and the prompts the FM receives."""

    def apply(images: np.ndarray, prompts: Prompts) -> tuple[np.ndarray, Prompts]:
        inputs = decoder.encode(images, prompts)
        prompted = apply_prompt(images, decoder.prompts(theta, inputs)[0])
        return prompted, decoder.refine(theta[None], inputs, prompts, images.shape[1:3])

    return apply
