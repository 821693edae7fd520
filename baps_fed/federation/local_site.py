"""One site of a federation, without Flower: its data, its FM, its local SPSA rounds.

``sites/`` (the Flower ClientApp) is a thin shell around ``LocalSite``; the in-process
federation (``baps_fed.federation.in_process``) and the benchmarks use the same class, so every
arm runs the same code. A round takes ``local_steps`` SPSA-GC steps from the round's start
point with the site's own optimiser state (kept across rounds) and returns the update
``theta_end - theta_start`` and aggregate metrics.
"""

from __future__ import annotations

import time

import numpy as np

from baps_fed.data.manifest import restrict
from baps_fed.data.sample import SegmentationDataset
from baps_fed.data.sources import open_source
from baps_fed.data.splits import split_dataset
from baps_fed.evaluation.evaluate import evaluate_fm
from baps_fed.federation.contract import (
    DP_TRAIN_METRICS,
    FedTrainConfig,
    PrivacyBudgetExhausted,
    RoundResult,
    SiteSpec,
    perturbation_key,
    site_id,
    site_prompt_config,
    site_prompt_seed,
    start_point,
)
from baps_fed.federation.site_state import SiteState
from baps_fed.fm.contract import BlackboxFM
from baps_fed.fm.spec import load_fm
from baps_fed.method.dp import DPConfig, PrivacyLedger
from baps_fed.method.ip_decoder import IPDecoder, build_decoder
from baps_fed.method.private_head import WithPrivateHead
from baps_fed.method.spsa import GeassConfig, SpsaState
from baps_fed.method.spsa_step import StepConfig, calibrate_c, prompt_fn, spsa_step


def open_site_source(spec: SiteSpec, size: int) -> SegmentationDataset:
    """A site's whole data source (synthetic cases or its folder letterboxed to ``size``), before
    its subset and split are applied (``site_splits``)."""
    return open_source(
        spec.data, n=spec.n, seed=spec.seed, scanner=spec.scanner, layout=spec.layout, size=size
    )


def site_splits(spec: SiteSpec, data: SegmentationDataset) -> dict[str, SegmentationDataset]:
    """The site's train/val/test splits of its opened source: the subset it names, each of its
    groups (``group_by``) whole in one split. Applied here, not when the data is opened, so a
    process holding a folder's data once (``sites/site_app.py``) serves every view of it."""
    return split_dataset(restrict(data, spec.subset, spec.group_by))


class LocalSite:
    """A site's data splits, FM, decoder and step settings, built once and reused each round."""

    def __init__(
        self,
        spec: SiteSpec,
        cfg: FedTrainConfig,
        fm: BlackboxFM | None = None,
        data: SegmentationDataset | None = None,
        splits: dict[str, SegmentationDataset] | None = None,
    ) -> None:
        """``splits``: the site's splits as given instead of its data's (a pooled arm's union
        of several sites' training splits)."""
        self.spec, self.cfg = spec, cfg
        self.id = site_id(spec.name)
        # the run's prompts, drawn with this hospital's box habit when it has one (a habit the
        # run cannot use fails here, before data or FM): the same in training, validation, test
        # and zero-shot, as its clinicians draw them
        self.prompting = site_prompt_config(cfg, spec)
        self.prompt_seed = site_prompt_seed(cfg, spec)
        self.decoder: IPDecoder = build_decoder(cfg.decoder_config())
        size = self.decoder.cfg.image_size
        if splits is None and data is None:
            data = open_site_source(spec, size)
        self.splits = splits if splits is not None else site_splits(spec, data)  # type: ignore[arg-type]
        train = self.splits["train"]
        if len(train) == 0:
            raise ValueError(f"site {spec.name!r}: no training cases in {spec.data!r}")
        self.images = np.stack([s.image for s in train])
        self.masks = np.stack([s.mask for s in train])
        if self.images.shape[1:3] != (size, size):
            raise ValueError(
                f"site {spec.name!r}: its cases are {self.images.shape[2]} x "
                f"{self.images.shape[1]} px, the run's image-size is {size}: synthetic cases are "
                "128 px (set image-size = 128); a data folder is letterboxed to image-size"
            )
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
        self.fm.require_prompt(self.prompting.kind)
        self.step_cfg = StepConfig(
            batch_size=cfg.batch_size,
            loss=cfg.loss,
            spsa=spsa,
            geass=GeassConfig(),
            dp=self.dp,
            prompt=self.prompting,
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
        home = {
            "num-examples": self.num_train,
            "train-loss": float(np.mean(losses)) if losses else float("nan"),
            "skipped-steps": skipped,
            "fm-queries": self.fm.meter.images - queries0,
            "seconds": time.perf_counter() - start,
            "spsa-step": first_step,
        }
        metrics = home
        if ledger is not None:
            ledger.record(self.cfg.local_steps)
            home |= {"epsilon": ledger.epsilon(), "delta": ledger.cfg.delta}
            metrics = {k: v for k, v in home.items() if k in DP_TRAIN_METRICS}
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
            home,
        )

    def train_from(
        self, theta_global: np.ndarray, server_round: int, state: SiteState
    ) -> RoundResult:
        """``train_round`` from the state the site kept (the one round every runtime runs)."""
        return self.train_round(
            theta_global, server_round, state.spsa, state.private, state.personal, state.privacy
        )

    def evaluate_from(self, theta: np.ndarray, state: SiteState) -> dict[str, float]:
        """``evaluate`` on the test split as this site uses the global decoder."""
        return self.evaluate(theta, state.private, personal=state.personal)

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
        seed, prompting = self.prompt_seed, self.prompting
        if split not in self._zero_shot:
            self._zero_shot[split] = evaluate_fm(self.fm, data, seed, prompting).summary()
        full = self._full(self.start_point(theta, personal), private)
        tuned = evaluate_fm(
            self.fm,
            data,
            seed,
            prompting,
            prompt=prompt_fn(self.model, full),  # type: ignore[arg-type]
        ).summary()
        if self.model is self.decoder and np.array_equal(full, theta):
            global_dice = tuned["dice"]
        else:
            glob = evaluate_fm(
                self.fm, data, seed, prompting, prompt=prompt_fn(self.decoder, theta)
            )
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
