"""A whole single-site BAPS run: validation, checkpoints, resume, query accounting.

The steps themselves are ``baps_fed.method.spsa_step``; batches and perturbations depend only
on (seed, step), so a run resumed from ``last.pt`` takes the same next step as one that never
stopped.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from baps_fed.data.boxes import BoxConfig
from baps_fed.data.prompts import PromptConfig
from baps_fed.data.sample import SegmentationDataset
from baps_fed.evaluation.evaluate import evaluate_fm
from baps_fed.flat_config import require_positive
from baps_fed.fm.contract import BlackboxFM
from baps_fed.fm.errors import QueryBudgetExceeded
from baps_fed.method.ip_decoder import IPDecoder, save_decoder
from baps_fed.method.perturbations import SeedKey
from baps_fed.method.spsa import GeassConfig, SpsaConfig, SpsaState
from baps_fed.method.spsa_step import (
    TARGET_GREY,
    StepConfig,
    calibrate_c,
    prompt_fn,
    spsa_step,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """A single-site run (``baps-fed train``; its flags take their defaults from here)."""

    steps: int = 300
    val_every: int = 50
    seed: int = 0
    site: int = 0
    target_grey: float = TARGET_GREY  # 0: spsa.c as given
    max_failed_steps: int = 20  # consecutive skipped steps before the run gives up
    step: StepConfig = field(default_factory=StepConfig)

    def __post_init__(self) -> None:
        require_positive(self, "steps", "val_every", "max_failed_steps")


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
            dice = evaluate_fm(fm, val, cfg.seed, cfg.step.prompt, prompt=prompt_fn(decoder, theta))
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
    p = dict(s.get("prompt", {"point_mode": s.pop("point_mode", "uniform")}))
    prompt = PromptConfig(**{**p, "box": BoxConfig(**p.get("box", {}))})
    s.pop("point_mode", None)  # checkpoints from before box prompts
    step = StepConfig(
        **{
            **s,
            "spsa": SpsaConfig(**s["spsa"]),
            "geass": GeassConfig(**s["geass"]),
            "prompt": prompt,
        }
    )
    return TrainConfig(**{**d, "step": step})
