"""The one-run canary audit of the DP mechanism on SPSA scalars: the real mechanism is never
flagged, a broken one (noise / 10) is.

The limit (docs/privacy-and-robustness.md, "What the audit shows"): with 400 canaries and at most
80 "in" guesses this audit certifies at most 2.9 (every guess right), so it checks a claimed
epsilon of 1; at claimed 4 or 8 even the broken mechanism stays below the claim.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from baps_fed.method.dp import DPConfig, noise_for_epsilon
from baps_fed.privacy_audit.canary_audit import (
    Canaries,
    CanaryConfig,
    canary_scores,
    released_scalars,
    run_canary_audit,
)

CFG = CanaryConfig()  # claimed epsilon 1, delta 1e-5, 2000 steps at rate 0.01, 400 canaries


@pytest.mark.parametrize("seed", [0, 1])
def test_the_real_mechanism_stays_below_its_accountants_epsilon(seed):
    result = run_canary_audit(CFG, rng=np.random.default_rng(seed))
    assert result.accountant_epsilon == pytest.approx(1.0, abs=0.01)
    assert result.lower_bound <= result.accountant_epsilon and not result.flagged


@pytest.mark.parametrize("seed", [0, 1])
def test_the_broken_mechanism_is_flagged(seed):
    result = run_canary_audit(CFG, noise_divisor=10, rng=np.random.default_rng(seed))
    sigma = noise_for_epsilon(CFG.epsilon, CFG.delta, CFG.sample_rate, CFG.steps)
    assert result.noise_multiplier == pytest.approx(sigma / 10)  # the accountant books sigma
    assert result.lower_bound > result.accountant_epsilon and result.flagged
    assert result.lower_bound <= result.ceiling


def test_a_claim_above_the_ceiling_cannot_be_refuted_even_when_broken():
    result = run_canary_audit(replace(CFG, epsilon=8.0), 10, np.random.default_rng(0))
    assert result.ceiling < 8 and not result.flagged


def test_without_noise_the_uploads_hold_each_drawn_canarys_clipped_loss_difference():
    cfg = replace(CFG, steps=200, canaries=40, slots=10, sample_rate=0.2)
    canaries = Canaries.draw(cfg)
    dp = DPConfig(clip=cfg.clip, noise_multiplier=0.0, sample_rate=cfg.sample_rate)
    uploads = released_scalars(cfg, canaries, dp, np.random.default_rng(0))
    assert len(uploads) == cfg.steps // cfg.steps_per_round  # one seed-and-scalar upload a round
    scores = canary_scores(cfg, canaries, uploads)
    n = int(canaries.included.sum())
    one = np.float32(cfg.clip / (cfg.sample_rate * n))  # 2C cut to C, over the expected batch
    assert set(np.unique(scores[~canaries.included])) == {0.0}  # out: never in a batch
    assert set(np.unique(scores[canaries.included])) == {0.0, one}  # in: drawn or not


def test_canaries_need_enough_slots():
    with pytest.raises(ValueError, match="slots"):
        CanaryConfig(canaries=500, slots=25, steps=2000, k=5)
