"""One SPSA step against a real (small, random) SAM: batching, determinism, faults, quantisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from baps_fed.decoder import DecoderConfig, IPDecoder
from baps_fed.fm.base import BlackboxFM, QueryBudgetExceeded
from baps_fed.fm.sam_batched import BatchedSam
from baps_fed.fm.torch_fm import TorchSamFM
from baps_fed.image_encoder import SmallImageEncoder
from baps_fed.prompting import apply_prompt
from baps_fed.train import StepConfig, calibrate_c, spsa_step
from baps_fed.zoo import SeedKey, SpsaConfig, SpsaState

KEY = SeedKey(master_seed=1, round=0, site=0)


class FlakyFM(BlackboxFM):
    """A real FM that fails its first ``failures`` calls, as a remote API might."""

    def __init__(self, inner: BlackboxFM, failures: int) -> None:
        super().__init__()
        self.inner, self.failures = inner, failures

    def _segment(self, images, points, labels):
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("service unavailable")
        return self.inner.segment(images, points, labels)


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
    inputs = dec.encode(images, points)
    delta = np.where(np.random.default_rng(3).random(dec.num_params) < 0.5, -1, 1) * 0.75
    plus, minus = dec.prompts(np.stack([cfg.spsa.c * delta, -cfg.spsa.c * delta]), inputs)
    moved = np.abs(apply_prompt(images, plus).astype(int) - apply_prompt(images, minus)).mean()
    assert moved > 3.0  # +/- c Delta is several grey levels apart at the FM's input
    # A perturbation whose largest pixel change is under half a grey level vanishes entirely.
    small = cfg.spsa.c * delta * (0.49 / 58.4) / (np.abs(plus).max() + 1e-12)
    p_small = dec.prompts(small, inputs)[0]
    assert np.abs(p_small).max() * 58.4 < 0.5
    np.testing.assert_array_equal(apply_prompt(images, p_small), images)
