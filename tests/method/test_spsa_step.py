"""One SPSA step against a real (small, random) SAM: batching, determinism, faults, quantisation."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from baps_fed.data.boxes import BoxConfig
from baps_fed.data.prompts import PromptConfig, Prompts
from baps_fed.fm.contract import BlackboxFM
from baps_fed.fm.errors import FMRefused, FMTransientError, QueryBudgetExceeded
from baps_fed.fm.sam_batched import BatchedSam
from baps_fed.fm.service.errors import (
    FMAuthError,
    FMMessageTooLarge,
    FMRateLimited,
    FMServiceFailure,
    FMUnavailable,
    RemoteQuotaExceeded,
)
from baps_fed.fm.torch_fm import TorchSamFM
from baps_fed.method.dp import DPConfig
from baps_fed.method.image_encoder import SmallImageEncoder
from baps_fed.method.ip_decoder import DecoderConfig, IPDecoder
from baps_fed.method.perturbations import SeedKey
from baps_fed.method.spsa import SpsaConfig, SpsaState, replay
from baps_fed.method.spsa_step import StepConfig, calibrate_c, spsa_step
from baps_fed.method.visual_prompt import apply_prompt

KEY = SeedKey(master_seed=1, round=0, site=0)


class FlakyFM(BlackboxFM):
    """A real FM that fails its first ``failures`` calls, as a remote API might."""

    def __init__(self, inner: BlackboxFM, failures: int) -> None:
        super().__init__()
        self.inner, self.failures = inner, failures

    def _segment(self, q):
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("service unavailable")
        return self.inner.segment(q.images, q.points, q.labels, q.boxes)


@pytest.fixture
def setup(small_sam):
    torch.manual_seed(0)
    dec = IPDecoder(DecoderConfig(image_size=64), SmallImageEncoder().eval(), "test")
    fm = TorchSamFM(BatchedSam(small_sam), "small")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    masks = np.zeros((6, 64, 64), bool)
    masks[:, 20:40, 15:45] = True
    c = calibrate_c(dec, target_grey=3.0)
    cfg = StepConfig(batch_size=3, spsa=SpsaConfig(c=c, update="sign", lr=0.05))
    return dec, fm, images, masks, cfg


def test_one_fm_call_carries_all_2k_prompted_copies(setup):
    dec, fm, images, masks, cfg = setup
    res = spsa_step(dec, fm, images, masks, dec.get_theta(), SpsaState(), cfg, KEY)
    assert fm.meter.calls == 1 and fm.meter.images == 2 * 5 * 3 == res.fm_images
    assert res.failure is None and res.state.step == 1
    assert np.abs(res.theta).max() > 0  # the random FM still responds to the prompt


def test_steps_are_reproducible_and_resume_exactly(setup):
    dec, fm, images, masks, cfg = setup
    theta, state = dec.get_theta(), SpsaState()
    trace = []
    for _ in range(3):
        r = spsa_step(dec, fm, images, masks, theta, state, cfg, KEY)
        theta, state = r.theta, r.state
        trace.append(theta)
    # "Resume" from the state after step 1 as a checkpoint would hold it.
    first = spsa_step(dec, fm, images, masks, dec.get_theta(), SpsaState(), cfg, KEY)
    restored = SpsaState.from_dict(first.state.to_dict())
    again = spsa_step(dec, fm, images, masks, first.theta.copy(), restored, cfg, KEY)
    np.testing.assert_array_equal(again.theta, trace[1])


def test_failed_fm_calls_are_retried_then_the_step_is_skipped(setup, small_sam):
    dec, _, images, masks, cfg = setup
    inner = TorchSamFM(BatchedSam(small_sam), "small")
    theta = dec.get_theta()
    ok = spsa_step(dec, FlakyFM(inner, failures=2), images, masks, theta, SpsaState(), cfg, KEY)
    assert ok.failure is None  # two failures, two retries
    bad = spsa_step(dec, FlakyFM(inner, failures=3), images, masks, theta, SpsaState(), cfg, KEY)
    assert "service unavailable" in bad.failure and bad.info.skipped
    np.testing.assert_array_equal(bad.theta, theta)  # never applied


def test_budget_ends_the_run_instead_of_being_retried(setup, small_sam):
    dec, _, images, masks, cfg = setup
    fm = TorchSamFM(BatchedSam(small_sam), "small", budget_images=20)
    with pytest.raises(QueryBudgetExceeded):
        spsa_step(dec, fm, images, masks, dec.get_theta(), SpsaState(), cfg, KEY)


def test_calibrated_perturbation_survives_the_uint8_cast(setup):
    dec, _, images, _, cfg = setup
    points = np.full((6, 1, 2), 32.0, np.float32)
    inputs = dec.encode(images, Prompts(points=points))
    delta = np.where(np.random.default_rng(3).random(dec.num_params) < 0.5, -1, 1) * 0.75
    plus, minus = dec.prompts(np.stack([cfg.spsa.c * delta, -cfg.spsa.c * delta]), inputs)
    moved = np.abs(apply_prompt(images, plus).astype(int) - apply_prompt(images, minus)).mean()
    assert moved > 3.0  # +/- c Delta is several grey levels apart at the FM's input
    # A perturbation whose largest pixel change is under half a grey level vanishes entirely.
    small = cfg.spsa.c * delta * (0.49 / 58.4) / (np.abs(plus).max() + 1e-12)
    p_small = dec.prompts(small, inputs)[0]
    assert np.abs(p_small).max() * 58.4 < 0.5
    np.testing.assert_array_equal(apply_prompt(images, p_small), images)


# -- DP on the K loss differences ---------------------------------------------------------------


class NanFM(BlackboxFM):
    """A real FM whose outputs are all NaN: every image's row of diffs is broken."""

    def __init__(self, inner: BlackboxFM) -> None:
        super().__init__()
        self.inner = inner

    def _segment(self, q):
        return np.full_like(self.inner.segment(q.images, q.points, q.labels, q.boxes), np.nan)


def _dp(cfg: StepConfig, **kw) -> StepConfig:
    return replace(cfg, dp=DPConfig(**{"clip": 1.0, "noise_multiplier": 1.0, **kw}))


def test_a_dp_step_is_replayed_from_its_noisy_k_vector_alone(setup):
    dec, fm, images, masks, cfg = setup
    cfg = _dp(cfg, sample_rate=0.5)
    theta = dec.get_theta()
    res = spsa_step(dec, fm, images, masks, theta, SpsaState(), cfg, KEY)
    assert res.fm_images % (2 * 5) == 0 and res.fm_images == fm.meter.images  # 2K x |batch|
    assert res.k_vector.shape == (5,) and np.isfinite(res.k_vector).all()
    w, state = replay(theta, [res.k_vector], SpsaState(), cfg.spsa, cfg.geass, KEY)
    np.testing.assert_array_equal(w, res.theta)
    assert state.step == res.state.step


def test_dp_noise_and_batches_do_not_come_from_the_public_seeds(setup):
    dec, fm, images, masks, cfg = setup
    cfg = _dp(cfg, sample_rate=1.0)  # the same full batch each time: only the noise differs
    a, b = (
        spsa_step(dec, fm, images, masks, dec.get_theta(), SpsaState(), cfg, KEY).k_vector
        for _ in range(2)
    )
    assert not np.array_equal(a, b)


def test_a_dp_step_with_broken_fm_outputs_releases_only_noise(setup):
    dec, fm, images, masks, cfg = setup
    cfg = _dp(cfg, sample_rate=1.0, noise_multiplier=0.0)
    res = spsa_step(dec, NanFM(fm), images, masks, dec.get_theta(), SpsaState(), cfg, KEY)
    np.testing.assert_array_equal(res.k_vector, np.zeros(5))  # NaN rows clipped to zero
    assert np.isfinite(res.theta).all()


class FailingFM(BlackboxFM):
    """Raises ``error`` on its first call, then answers."""

    def __init__(self, inner: BlackboxFM, error: Exception) -> None:
        super().__init__()
        self.inner, self.error = inner, error

    def _segment(self, q):
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        return self.inner.segment(q.images, q.points, q.labels, q.boxes)


@pytest.mark.parametrize(
    "error",
    [FMUnavailable("down"), FMRateLimited("slow down"), FMServiceFailure("deadline")],
    ids=["unavailable", "rate-limited", "deadline"],
)
def test_the_contracts_transient_errors_are_retried_whoever_raises_them(setup, small_sam, error):
    dec, _, images, masks, cfg = setup
    assert isinstance(error, FMTransientError)
    fm = FailingFM(TorchSamFM(BatchedSam(small_sam), "small"), error)
    res = spsa_step(dec, fm, images, masks, dec.get_theta(), SpsaState(), cfg, KEY)
    # the failed call raised (the meter counts answered calls only), the retry answered
    assert fm.error is None and res.failure is None and fm.meter.calls == 1


@pytest.mark.parametrize(
    "error",
    [FMAuthError("bad token"), FMMessageTooLarge("too big"), RemoteQuotaExceeded("spent")],
    ids=["auth", "too-large", "quota"],
)
def test_refusals_and_a_spent_budget_are_not_retried(setup, small_sam, error):
    dec, _, images, masks, cfg = setup
    assert isinstance(error, FMRefused | QueryBudgetExceeded)
    fm = FailingFM(TorchSamFM(BatchedSam(small_sam), "small"), error)
    with pytest.raises(type(error)):
        spsa_step(dec, fm, images, masks, dec.get_theta(), SpsaState(), cfg, KEY)
    assert fm.error is None and fm.meter.calls == 0  # raised once, never retried


class RecordingFM(BlackboxFM):
    prompt_kinds = frozenset({"box"})

    def __init__(self, inner: BlackboxFM) -> None:
        super().__init__()
        self.inner, self.queries = inner, []

    def _segment(self, q):
        self.queries.append(q)
        return self.inner.segment(q.images, q.points, q.labels, q.boxes)


def test_box_prompts_reach_the_fm_for_all_2k_copies(setup, small_sam):
    dec, _, images, masks, cfg = setup
    fm = RecordingFM(TorchSamFM(BatchedSam(small_sam), "small"))
    cfg = replace(cfg, prompt=PromptConfig(kind="box", box=BoxConfig(protocol="tight")))
    res = spsa_step(dec, fm, images, masks, dec.get_theta(), SpsaState(), cfg, KEY)
    (q,) = fm.queries
    k = cfg.spsa.sp_avg
    assert q.points is None and q.boxes.shape == (2 * k * 3, 4)
    boxes = q.boxes.reshape(2 * k, 3, 4)
    assert (boxes == boxes[:1]).all()  # every perturbed copy of an image has the same box
    assert (boxes[0, :, :2] <= [15, 20]).all() and (boxes[0, :, 2:] >= [44, 39]).all()  # tight
    assert res.failure is None and np.abs(res.theta).max() > 0
    again = spsa_step(dec, fm, images, masks, dec.get_theta(), SpsaState(), cfg, KEY)
    np.testing.assert_array_equal(fm.queries[1].boxes, q.boxes)  # boxes seeded by the step
    np.testing.assert_array_equal(again.theta, res.theta)
