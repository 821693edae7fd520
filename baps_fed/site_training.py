"""One site of a federation, without Flower: its data, its FM, its local SPSA rounds.

``sites/`` (the Flower ClientApp) is a thin shell around ``LocalSite``; the benchmarks use the
same class for local-only and pooled training, so every arm runs the same code. A round starts
from the global decoder (or, with ``personal_keep`` > 0, from a mix of it and the site's own
decoder of the last round), takes ``local_steps`` SPSA-GC steps with the site's own optimiser
state (kept across rounds), and returns the update ``theta_end - theta_start`` and aggregate
metrics.
Perturbations are named by (master seed, round, site id, step), so any machine can replay them.
"""

from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from baps_fed.data.sample import SegmentationDataset
from baps_fed.data.sources import open_source
from baps_fed.data.splits import split_dataset
from baps_fed.decoder import DecoderConfig, IPDecoder, build_decoder
from baps_fed.evaluation import evaluate_fm
from baps_fed.flat_config import values_from_flat
from baps_fed.fm.base import BlackboxFM
from baps_fed.fm.spec import load_fm
from baps_fed.personal import WithPrivateHead
from baps_fed.privacy import DPConfig, PrivacyLedger
from baps_fed.train import StepConfig, calibrate_c, prompt_fn, spsa_step
from baps_fed.zoo import GeassConfig, SeedKey, SpsaConfig, SpsaState


@dataclass(frozen=True)
class SiteSpec:
    """Where a site's data and FM come from (a hospital's node config)."""

    name: str
    data: str  # a synthetic modality name or a data folder
    n: int = 200  # synthetic cases (ignored for folders)
    seed: int = 0  # synthetic data seed
    scanner: int = 0  # synthetic acquisition profile
    layout: str = "auto"
    fm: str = "tiny"
    # the site's own privacy policy (used when the run has dp on): total epsilon it will
    # spend over the run, at its delta
    dp_epsilon_budget: float = math.inf
    dp_delta: float = 1e-5


class PrivacyBudgetExhausted(RuntimeError):
    """A site declines a round that would take it past its epsilon budget."""


@dataclass(frozen=True)
class FedTrainConfig:
    """Settings every site of a run shares (the run config); defaults are the measured ones of
    the single-site runs: 72-parameter basis decoder, sign updates, c at 3 grey levels."""

    master_seed: int = 0
    local_steps: int = 10
    batch_size: int = 8
    sp_avg: int = 5
    lr: float = 0.02
    update: str = "sign"
    beta: float = 0.4
    loss: str = "dice"
    target_grey: float = 3.0
    preset: str = "basis"
    vp_grid: int = 4
    image_encoder: str = "small"  # the decoder's frozen encoder; "clip:[MODEL:]PATH" needs the
    # same weights file at that path on every site (baps_fed/image_encoder.py)
    decoder_seed: int = 0
    point_seed: int = 0  # evaluation points
    private_head: str = "basis"  # each site's private prompt head: basis | colour | none
    # Share of its own decoder a site keeps when a round starts: it starts from
    # (1 - keep) * global + keep * own (0: plain FedAvg, every site starts from the global).
    personal_keep: float = 0.0
    # what a train reply carries: "dense" (the update), "seeds" (steps x K scalars that the
    # coordinator replays into the update, baps_fed/codec.py) or "model" (global + update,
    # Flower's usual form, which its central DP wrappers need: coordinator/central_dp.py)
    upload: str = "dense"
    # every site of a round perturbs along the same directions (zoo.SeedKey.step0), which the
    # coordinator's scalar-median / scalar-trimmed-mean aggregations need
    shared_perturbations: bool = False

    # DP on the K loss differences of every step (baps_fed/privacy.py): clip bound C on each
    # image's K-vector, noise multiplier, Poisson rate of each step's batch, accountant
    dp: bool = False
    # the median per-image K-vector norm measured on the colonoscopy- and fundus-like sites
    # at the default c (0.21, 0.23; 90th percentile 0.39, 0.57): about half the images clipped
    dp_clip: float = 0.25
    dp_noise: float = 1.0
    dp_sample_rate: float = 0.1
    dp_accountant: str = "rdp"

    def __post_init__(self) -> None:
        if self.upload not in ("dense", "seeds", "model"):
            raise ValueError(f"upload must be 'dense', 'seeds' or 'model', got {self.upload!r}")
        if not 0 <= self.personal_keep <= 1:
            raise ValueError(f"personal-keep must be in [0, 1], got {self.personal_keep}")

    def spsa_config(self, c: float) -> SpsaConfig:
        """The SPSA-GC step rule every site runs (and a coordinator replays), at scale c."""
        return SpsaConfig(
            sp_avg=self.sp_avg,
            c=c,
            lr=self.lr,
            schedule="constant",
            beta=self.beta,
            update=self.update,  # type: ignore[arg-type]
        )

    @classmethod
    def from_flat(cls, config: dict[str, Any]) -> FedTrainConfig:
        """From a flat dict with Flower-style keys ("local-steps") or field names."""
        return cls(**values_from_flat(cls, config))

    def decoder_config(self) -> DecoderConfig:
        return DecoderConfig(
            preset=self.preset,  # type: ignore[arg-type]
            vp_grid=self.vp_grid,
            init_seed=self.decoder_seed,
            image_encoder=self.image_encoder,
        )


def site_id(name: str) -> int:
    """A stable integer for a site's name: part of its perturbation seeds."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def perturbation_key(cfg: FedTrainConfig, server_round: int, site: int, first_step: int) -> SeedKey:
    """The seed key of a site's round, ``first_step`` being its optimiser step at the start."""
    step0 = first_step if cfg.shared_perturbations else None
    return SeedKey(cfg.master_seed, server_round, site, step0)


def initial_theta(cfg: FedTrainConfig) -> np.ndarray:
    """The decoder every site starts from (the coordinator's round-0 global decoder)."""
    return build_decoder(cfg.decoder_config()).get_theta()


def start_point(theta_global: np.ndarray, personal: np.ndarray | None, keep: float) -> np.ndarray:
    """(1 - keep) * global + keep * own: where a site's round starts (its own is None in its
    first round)."""
    theta = np.asarray(theta_global, np.float32)
    if personal is None or keep == 0:
        return theta.copy()
    return ((1 - keep) * theta + keep * np.asarray(personal, np.float32)).astype(np.float32)


@dataclass
class RoundResult:
    update: np.ndarray  # theta_end - theta_start, float32 (the shared weights only)
    state: SpsaState  # the site's optimiser state after the round (stays at the site)
    metrics: dict[str, float]  # aggregates only: what may leave the site
    private: np.ndarray  # the site's private head after the round (stays at the site)
    personal: np.ndarray  # the site's own shared-shape decoder after the round (stays)
    privacy: list[tuple[float, float, int]]  # the accountant's history (stays; [] without DP)
    scalars: np.ndarray  # [steps, K] float32: the K-vector of every step (seed-and-scalar form)
    c: float  # the perturbation scale the steps used (with the scalars, replays the round)


class LocalSite:
    """A site's data splits, FM, decoder and step settings, built once and reused each round."""

    def __init__(
        self,
        spec: SiteSpec,
        cfg: FedTrainConfig,
        fm: BlackboxFM | None = None,
        data: SegmentationDataset | None = None,
    ) -> None:
        self.spec, self.cfg = spec, cfg
        self.id = site_id(spec.name)
        self.decoder: IPDecoder = build_decoder(cfg.decoder_config())
        size = self.decoder.cfg.image_size
        if data is None:
            data = open_source(
                spec.data,
                n=spec.n,
                seed=spec.seed,
                scanner=spec.scanner,
                layout=spec.layout,
                size=size,
            )
        self.splits = split_dataset(data)
        train = self.splits["train"]
        if len(train) == 0:
            raise ValueError(f"site {spec.name!r}: no training cases in {spec.data!r}")
        self.images = np.stack([s.image for s in train])
        self.masks = np.stack([s.mask for s in train])
        self.fm = fm if fm is not None else load_fm(spec.fm)
        # what SPSA trains here: the shared decoder, plus the private head when there is one
        self.model: IPDecoder | WithPrivateHead = (
            self.decoder
            if cfg.private_head == "none"
            else WithPrivateHead(self.decoder, cfg.private_head)
        )
        c = calibrate_c(self.model, cfg.target_grey, seed=cfg.master_seed)  # type: ignore[arg-type]
        spsa = cfg.spsa_config(c)
        self.dp = (
            DPConfig(
                clip=cfg.dp_clip,
                noise_multiplier=cfg.dp_noise,
                sample_rate=cfg.dp_sample_rate,
                delta=spec.dp_delta,
                accountant=cfg.dp_accountant,  # type: ignore[arg-type]
                epsilon_budget=spec.dp_epsilon_budget,
            )
            if cfg.dp
            else None
        )
        self.step_cfg = StepConfig(
            batch_size=cfg.batch_size, loss=cfg.loss, spsa=spsa, geass=GeassConfig(), dp=self.dp
        )
        self._zero_shot: dict[str, dict[str, float]] = {}

    @property
    def num_train(self) -> int:
        return len(self.images)

    def initial_private(self) -> np.ndarray:
        return np.zeros(self.model.num_params - self.decoder.num_params, np.float32)

    def _full(self, theta: np.ndarray, private: np.ndarray | None) -> np.ndarray:
        private = self.initial_private() if private is None else private
        return np.concatenate([np.asarray(theta, np.float32), private]).astype(np.float32)

    def start_point(self, theta_global: np.ndarray, personal: np.ndarray | None) -> np.ndarray:
        """The shared-shape decoder this site uses: the global one, moved towards the site's
        own by ``personal_keep`` (FedAvg with interpolated personalisation)."""
        theta = np.asarray(theta_global, np.float32)
        if theta.size != self.decoder.num_params:
            raise ValueError(
                f"site {self.spec.name!r}: the global decoder has {theta.size} parameters, "
                f"this site's decoder {self.decoder.num_params}: the run and the site disagree "
                "on the decoder preset"
            )
        return start_point(theta, personal, self.cfg.personal_keep)

    def train_round(
        self,
        theta_global: np.ndarray,
        server_round: int,
        state: SpsaState | None,
        private: np.ndarray | None = None,
        personal: np.ndarray | None = None,
        privacy: list[tuple[float, float, int]] | None = None,
    ) -> RoundResult:
        theta = self.start_point(theta_global, personal)
        ledger = PrivacyLedger(self.dp, privacy or ()) if self.dp is not None else None
        if ledger is not None and not ledger.can_afford(self.cfg.local_steps):
            raise PrivacyBudgetExhausted(
                f"site {self.spec.name!r} declines round {server_round}: "
                f"{self.cfg.local_steps} more steps would bring its epsilon from "
                f"{ledger.epsilon():.2f} to {ledger.epsilon_after(self.cfg.local_steps):.2f}, "
                f"past its budget {self.dp.epsilon_budget:g} (delta {self.dp.delta:g}); raise "
                "dp-epsilon-budget in its node config to let it take part again"
            )
        state = state or SpsaState()
        first_step = state.step
        key = perturbation_key(self.cfg, server_round, self.id, first_step)
        start, queries0 = time.perf_counter(), self.fm.meter.images
        losses, skipped, scalars = [], 0, []
        full = self._full(theta, private)
        for _ in range(self.cfg.local_steps):
            r = spsa_step(
                self.model,
                self.fm,
                self.images,
                self.masks,
                full,
                state,
                self.step_cfg,
                key,  # type: ignore[arg-type]
            )
            full, state = r.theta, r.state
            scalars.append(r.k_vector)
            skipped += r.failure is not None
            if np.isfinite(r.loss):
                losses.append(r.loss)
        metrics = {
            "num-examples": self.num_train,
            "train-loss": float(np.mean(losses)) if losses else float("nan"),
            "skipped-steps": skipped,
            "fm-queries": self.fm.meter.images - queries0,
            "seconds": time.perf_counter() - start,
            "spsa-step": first_step,
        }
        if ledger is not None:
            ledger.record(self.cfg.local_steps)
            del metrics["train-loss"]  # not privatised: under DP it stays home
            metrics |= {"epsilon": ledger.epsilon(), "delta": ledger.cfg.delta}
        shared, private = full[: theta.size], full[theta.size :]
        update = (shared - theta).astype(np.float32)  # the site's progress this round
        return RoundResult(
            update,
            state,
            metrics,
            private.astype(np.float32),
            shared.astype(np.float32),
            ledger.history if ledger is not None else [],
            np.stack(scalars).astype(np.float32),
            float(self.step_cfg.spsa.c),
        )

    def evaluate(
        self,
        theta: np.ndarray,
        private: np.ndarray | None = None,
        split: str = "test",
        personal: np.ndarray | None = None,
    ) -> dict[str, float]:
        """On one split: Dice/IoU/HD95 of the FM prompted as this site uses it (its start point
        from the global decoder, plus its private head), of the global decoder alone, and
        zero-shot."""
        data = self.splits[split]
        queries0 = self.fm.meter.images
        seed = self.cfg.point_seed
        if split not in self._zero_shot:
            self._zero_shot[split] = evaluate_fm(self.fm, data, seed).summary()
        full = self._full(self.start_point(theta, personal), private)
        tuned = evaluate_fm(self.fm, data, seed, prompt=prompt_fn(self.model, full)).summary()  # type: ignore[arg-type]
        if self.model is self.decoder and np.array_equal(full, theta):
            global_dice = tuned["dice"]
        else:
            glob = evaluate_fm(self.fm, data, seed, prompt=prompt_fn(self.decoder, theta))
            global_dice = glob.summary()["dice"]
        zero = self._zero_shot[split]
        return {
            "num-examples": len(data),
            "dice": tuned["dice"],
            "iou": tuned["iou"],
            "hd95": tuned["hd95"],
            "global-dice": global_dice,
            "zero-shot-dice": zero["dice"],
            "zero-shot-iou": zero["iou"],
            "zero-shot-hd95": zero["hd95"],
            "fm-queries": self.fm.meter.images - queries0,
        }


def spec_from_flat(config: dict[str, Any], default_name: str) -> SiteSpec:
    """A SiteSpec from a node config (Flower keys: data, site-name, n, seed, scanner, layout,
    fm); unknown keys are ignored, a missing ``data`` is an error naming what to set."""
    if "data" not in config:
        raise ValueError(
            "the node config names no data: start the site with --node-config "
            "'data=\"/path/to/site\"' (or a synthetic modality name)"
        )
    name = str(config.get("site-name", default_name))
    return SiteSpec(name=name, data=str(config["data"]), **values_from_flat(SiteSpec, config))
