"""One site's BAPS training: SPSA-GC / GEASS on the IP decoder against a black-box FM.

``spsa_step`` is one zeroth-order step (used by single-site training here and by a federated
site for its local steps): a batch, its K perturbations, ALL 2K prompted copies of the batch in
ONE FM call, per-image losses, the [B, K] loss differences, the update. Batches, points and
perturbations are functions of (seed, round, site, step) only, so a run resumed from a
checkpoint takes the same next step as one that never stopped.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from baps_fed.data.points import PointMode, sample_point
from baps_fed.data.sample import SegmentationDataset
from baps_fed.decoder import IPDecoder, save_decoder
from baps_fed.evaluation import evaluate_fm
from baps_fed.fm.base import BlackboxFM, QueryBudgetExceeded
from baps_fed.fm.service.errors import FMAuthError, FMMessageTooLarge, FMServiceError
from baps_fed.metrics import LOSSES
from baps_fed.privacy import DPConfig, poisson_batch, private_k_vector, secret_rng
from baps_fed.prompting import apply_prompt, grey_levels
from baps_fed.zoo import (
    GeassConfig,
    SeedKey,
    SpsaConfig,
    SpsaState,
    StepInfo,
    apply_update,
    average_diffs,
    current_c,
    seed_words,
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
    # DP on the K loss differences (baps_fed/privacy.py); batches are then Poisson-sampled at
    # dp.sample_rate and batch_size is unused
    dp: DPConfig | None = None


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
    """The generator of a step's batch and points: independent of the perturbation stream
    (same fixed-width seed words as the perturbations, plus one more word)."""
    return np.random.default_rng(seed_words((key.master_seed, key.round, key.site, step, 0)) + [1])


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
    """One SPSA-GC/GEASS step on a batch of this site's data; 2K x B images in one FM call.

    Under DP (``cfg.dp``) the batch is Poisson-sampled from a secret generator and the update
    is computed from the clipped, noised K-vector alone (``privacy.private_k_vector``)."""
    k = cfg.spsa.sp_avg
    dp = cfg.dp
    rng = secret_rng() if dp is not None else batch_rng(key, state.step)
    if dp is None:
        idx, points = sample_batch(masks, cfg.batch_size, rng, cfg.point_mode)
    else:
        idx = poisson_batch(len(masks), dp.sample_rate, rng)
        points = _points(masks, idx, rng, cfg.point_mode)
    deltas = step_perturbations(key, state, cfg.spsa, theta.size)
    b = len(idx)
    diffs, losses, failure, n_images = np.zeros((0, k)), np.zeros((2 * k, 0)), None, 0
    if b:
        batch_images, batch_masks = images[idx], masks[idx]
        inputs = decoder.encode(batch_images, points)
        c = current_c(state, cfg.spsa, cfg.geass)
        thetas = np.concatenate([theta + c * deltas, theta - c * deltas]).astype(np.float32)
        prompts = decoder.prompts(thetas, inputs)  # [2K, B, 3, S, S]
        prompted = apply_prompt(
            np.tile(batch_images, (2 * k, 1, 1, 1)),
            prompts.reshape(2 * k * b, *prompts.shape[2:]),
        )
        n_images = len(prompted)
        logits, failure = _query(fm, prompted, np.tile(points, (2 * k, 1, 1)), cfg.fm_retries)
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


def _points(masks: np.ndarray, idx: np.ndarray, rng: np.random.Generator, mode: PointMode):
    if not len(idx):
        return np.zeros((0, 1, 2), np.float32)
    return np.stack([sample_point(masks[i], rng, mode) for i in idx])[:, None]


def _is_transient(err: Exception) -> bool:
    """Worth retrying: the network or the service, not the query or the credentials."""
    if isinstance(err, (FMAuthError, FMMessageTooLarge)):
        return False
    return isinstance(err, (ConnectionError, TimeoutError, FMServiceError))


def _query(
    fm: BlackboxFM, images: np.ndarray, points: np.ndarray, retries: int
) -> tuple[np.ndarray | None, str | None]:
    """The FM's logits, retrying transient failures; None and the reason when they persist.

    A spent budget, a refused token or a malformed query is not retried: it propagates, since
    no later step would fare better.
    """
    error = None
    for _ in range(retries + 1):
        try:
            return fm.segment(images, points), None
        except Exception as err:
            if not _is_transient(err):
                raise
            error = f"FM call failed: {type(err).__name__}: {err}"
            logger.warning(error)
    return None, error


# ---------------------------------------------------------------------------------------------
# A whole single-site run: validation, checkpoints, resume, query accounting
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    val_every: int = 100
    seed: int = 0
    site: int = 0
    target_grey: float = 3.0  # c moves the prompt by this many grey levels; 0: spsa.c as given
    max_failed_steps: int = 20  # consecutive skipped steps before the run gives up
    step: StepConfig = field(default_factory=StepConfig)


@dataclass
class TrainResult:
    theta: np.ndarray  # the best weights on validation
    best_val_dice: float
    zero_shot_val_dice: float
    history: list[dict]
    stopped: str  # "done", or why the run ended early
    fm_images_train: int
    fm_images_val: int
    config: TrainConfig  # as run: c after calibration


def prompt_fn(
    decoder: IPDecoder, theta: np.ndarray
) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """images, points -> the prompted uint8 images the FM receives (for evaluation)."""

    def apply(images: np.ndarray, points: np.ndarray) -> np.ndarray:
        return apply_prompt(images, decoder.prompts(theta, decoder.encode(images, points))[0])

    return apply


def _state_to_record(state: SpsaState) -> dict:
    return {
        k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
        for k, v in state.to_dict().items()
    }


def _state_from_record(record: dict) -> SpsaState:
    return SpsaState.from_dict(
        {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in record.items()}
    )


def data_fingerprint(*datasets: SegmentationDataset) -> str:
    """Names of every sample, in order: a resumed run must see the same data."""
    names = "\n".join(s.name for ds in datasets for s in ds)
    return hashlib.sha256(names.encode()).hexdigest()[:16]


@dataclass
class _Progress:
    """Everything a checkpoint must hold for a resumed run to continue exactly."""

    theta: np.ndarray
    state: SpsaState
    history: list[dict]
    best: float
    zero_shot: float
    train_images: int = 0
    val_images: int = 0

    def record(self, cfg: TrainConfig, fingerprint: str, fm_name: str) -> dict:
        return {
            "spsa_state": _state_to_record(self.state),
            "train_config": asdict(cfg),
            "history": self.history,
            "best_val_dice": self.best,
            "zero_shot_val_dice": self.zero_shot,
            "train_images": self.train_images,
            "val_images": self.val_images,
            "data_fingerprint": fingerprint,
            "fm": fm_name,
        }


def _save(path: Path, decoder: IPDecoder, theta: np.ndarray, extra: dict) -> None:
    decoder.set_theta(theta)
    tmp = path.with_suffix(".tmp")
    save_decoder(tmp, decoder, extra)
    tmp.replace(path)  # atomic: a crash mid-write never loses the previous checkpoint


def _resume(
    path: Path, cfg: TrainConfig, fingerprint: str, fm_name: str
) -> tuple[TrainConfig, _Progress]:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    extra = blob["extra"]
    if extra["data_fingerprint"] != fingerprint:
        raise ValueError(
            f"{path} was trained on other data (or another split/--n); resume "
            "with the same data options, or start a new run folder"
        )
    if extra["fm"] != fm_name:
        raise ValueError(f"{path} was trained against FM {extra['fm']!r}, not {fm_name!r}")
    run_cfg = replace(_config_from_dict(extra["train_config"]), steps=cfg.steps)  # may extend
    progress = _Progress(
        blob["theta"].numpy(),
        _state_from_record(extra["spsa_state"]),
        extra["history"],
        extra["best_val_dice"],
        extra["zero_shot_val_dice"],
        extra["train_images"],
        extra["val_images"],
    )
    return run_cfg, progress


def train_site(
    decoder: IPDecoder,
    fm: BlackboxFM,
    train: SegmentationDataset,
    val: SegmentationDataset,
    cfg: TrainConfig,
    run_dir: Path,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train the decoder with SPSA on ``train``, validating on ``val``; writes run_dir/checkpoints.

    With ``resume``, continues from run_dir/checkpoints/last.pt (same data and FM required):
    the next step is the one the interrupted run would have taken, since batches and
    perturbations depend only on the step. Ends early, keeping best.pt, when the FM's query
    budget runs out or the FM fails ``max_failed_steps`` steps in a row.
    """
    ckpt = run_dir / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    images = np.stack([s.image for s in train])
    masks = np.stack([s.mask for s in train])
    if images.shape[1:3] != (decoder.cfg.image_size,) * 2:
        raise ValueError(
            f"{train.name}: images are {images.shape[2]}x{images.shape[1]} but the "
            f"decoder makes {decoder.cfg.image_size} px prompts; letterbox the data "
            "to the decoder's image size"
        )
    fingerprint = data_fingerprint(train, val)
    key = SeedKey(cfg.seed, 0, cfg.site)

    def validate(run: _Progress, theta: np.ndarray) -> float:
        before = fm.meter.images
        try:
            dice = evaluate_fm(fm, val, point_seed=cfg.seed, prompt=prompt_fn(decoder, theta))
        finally:
            run.val_images += fm.meter.images - before
        return float(dice.dice.mean())

    if resume and (ckpt / "last.pt").is_file():
        cfg, run = _resume(ckpt / "last.pt", cfg, fingerprint, fm.name)
        best_theta = decoder_theta(ckpt / "best.pt")
    else:
        if cfg.target_grey > 0:
            c = calibrate_c(decoder, cfg.target_grey, seed=cfg.seed)
            cfg = replace(cfg, step=replace(cfg.step, spsa=replace(cfg.step.spsa, c=c)))
        run = _Progress(decoder.get_theta(), SpsaState(), [], 0.0, 0.0)
        run.zero_shot = run.best = validate(run, run.theta)
        best_theta = run.theta
        run.history.append({"step": 0, "val_dice": run.best, "fm_images": 0})
        _save(ckpt / "best.pt", decoder, run.theta, run.record(cfg, fingerprint, fm.name))
    stopped, failed_in_a_row = "done", 0
    bar = tqdm(
        total=cfg.steps,
        initial=run.state.step,
        disable=not progress,
        unit="step",
        desc=f"train {train.name}",
    )
    while run.state.step < cfg.steps:
        try:
            res = spsa_step(decoder, fm, images, masks, run.theta, run.state, cfg.step, key)
        except QueryBudgetExceeded as err:
            stopped = f"query budget reached: {err}"
            break
        run.theta, run.state = res.theta, res.state
        run.train_images += res.fm_images
        failed_in_a_row = failed_in_a_row + 1 if res.failure else 0
        row = {
            "step": run.state.step,
            "loss": res.loss,
            "grad_norm": res.info.grad_norm,
            "lr": res.info.lr,
            "c": res.info.c,
            "skipped": res.failure or "",
            "fm_images": run.train_images,
        }
        bar.update(1)
        if failed_in_a_row >= cfg.max_failed_steps:
            run.history.append(row)
            stopped = f"the FM failed {failed_in_a_row} steps in a row ({res.failure}); check it"
            break
        if run.state.step % cfg.val_every == 0 or run.state.step == cfg.steps:
            try:
                row["val_dice"] = validate(run, run.theta)
            except QueryBudgetExceeded as err:
                run.history.append(row)
                stopped = f"query budget reached during validation: {err}"
                break
            run.history.append(row)
            if row["val_dice"] > run.best:
                run.best, best_theta = row["val_dice"], run.theta
                _save(ckpt / "best.pt", decoder, run.theta, run.record(cfg, fingerprint, fm.name))
            _save(ckpt / "last.pt", decoder, run.theta, run.record(cfg, fingerprint, fm.name))
            bar.set_postfix(
                loss=f"{res.loss:.3f}", val=f"{row['val_dice']:.3f}", best=f"{run.best:.3f}"
            )
        else:
            run.history.append(row)
    bar.close()
    _save(ckpt / "last.pt", decoder, run.theta, run.record(cfg, fingerprint, fm.name))
    decoder.set_theta(best_theta)
    return TrainResult(
        best_theta,
        run.best,
        run.zero_shot,
        run.history,
        stopped,
        run.train_images,
        run.val_images,
        cfg,
    )


def decoder_theta(path: Path) -> np.ndarray:
    return torch.load(path, map_location="cpu", weights_only=True)["theta"].numpy()


def _config_from_dict(d: dict) -> TrainConfig:
    s = dict(d["step"])
    step = StepConfig(**{**s, "spsa": SpsaConfig(**s["spsa"]), "geass": GeassConfig(**s["geass"])})
    return TrainConfig(**{**d, "step": step})
