"""DP on SPSA scalars: clipping, noise, Poisson batches and the accountant's epsilon, checked
against an independent computation of the sampled Gaussian mechanism's Renyi DP."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate

from baps_fed.method.dp import (
    DPConfig,
    PrivacyLedger,
    clip_rows,
    noise_for_epsilon,
    poisson_batch,
    private_k_vector,
)

ORDERS = list(range(2, 64))  # integer Renyi orders: both computations use the same grid


def sgm_rdp_by_integration(q: float, sigma: float, alpha: int) -> float:
    """RDP of one sampled Gaussian step at order alpha, by numerically integrating
    E_{z ~ N(0, s^2)} [((1 - q) + q * N(z; 1, s^2) / N(z; 0, s^2)) ^ alpha]
    (Mironov, Talwar, Zhang 2019: this direction is the larger one for alpha >= 2)."""

    log_keep = math.log1p(-q) if q < 1 else -np.inf
    log_norm = math.log(sigma * math.sqrt(2 * math.pi))

    def log_integrand(z):  # log N(z; 0, s^2) + alpha log((1 - q) + q N(z; 1, s^2) / N(z; 0, s^2))
        mix = np.logaddexp(log_keep, math.log(q) + (2 * z - 1) / (2 * sigma**2))
        return -(z**2) / (2 * sigma**2) - log_norm + alpha * mix

    # the integrand can exceed any float: integrate it scaled by its peak, in log space
    grid = np.linspace(-20 * sigma, alpha + 20 * sigma, 20001)
    logs = log_integrand(grid)
    peak, top = grid[logs.argmax()], logs.max()
    lo, hi = peak - 40 * sigma, peak + 40 * sigma
    a, _ = integrate.quad(
        lambda z: math.exp(log_integrand(z) - top), lo, hi, points=[peak], limit=400
    )
    return (top + math.log(a)) / (alpha - 1)


def epsilon_from_rdp(rdp: list[float], delta: float) -> float:
    """Balle et al. 2020, Theorem 21: the RDP to (epsilon, delta) conversion."""
    eps = [
        r - (math.log(delta) + math.log(a)) / (a - 1) + math.log((a - 1) / a)
        for r, a in zip(rdp, ORDERS, strict=True)
    ]
    return min(eps)


@pytest.mark.parametrize("q, sigma, steps", [(1.0, 2.0, 10), (0.1, 1.0, 48), (0.25, 1.5, 200)])
def test_accountant_epsilon_matches_an_independent_computation(q, sigma, steps):
    delta = 1e-5
    if q == 1.0:  # the Gaussian mechanism: closed form alpha / (2 sigma^2)
        rdp = [steps * a / (2 * sigma**2) for a in ORDERS]
    else:
        rdp = [steps * sgm_rdp_by_integration(q, sigma, a) for a in ORDERS]
    expected = epsilon_from_rdp(rdp, delta)
    ledger = PrivacyLedger(DPConfig(noise_multiplier=sigma, sample_rate=q, delta=delta))
    ledger.record(steps)
    got = ledger._acc.get_epsilon(delta=delta, alphas=ORDERS)
    assert got == pytest.approx(expected, rel=1e-4)
    assert ledger.epsilon() <= expected + 1e-9  # Opacus' finer default grid can only help


def test_prv_accountant_is_tighter_than_rdp_but_close():
    cfg = DPConfig(noise_multiplier=1.0, sample_rate=0.1)
    rdp, prv = PrivacyLedger(cfg), PrivacyLedger(DPConfig(**{**cfg.__dict__, "accountant": "prv"}))
    rdp.record(100), prv.record(100)
    assert 0.6 * rdp.epsilon() < prv.epsilon() <= rdp.epsilon() * 1.01


def test_clipping_bounds_each_image_and_zeroes_broken_rows():
    diffs = np.array([[3.0, 4.0], [0.3, 0.4], [np.nan, 1.0]])
    out = clip_rows(diffs, 1.0)
    np.testing.assert_allclose(out[0], [0.6, 0.8])  # norm 5 -> 1
    np.testing.assert_allclose(out[1], [0.3, 0.4])  # already within the bound
    np.testing.assert_array_equal(out[2], [0.0, 0.0])


def test_one_image_moves_the_released_sum_by_at_most_the_clip_bound():
    rng = np.random.default_rng(0)
    batch = rng.normal(0, 2, (16, 5))
    outlier = rng.normal(0, 1e6, (1, 5))
    cfg = DPConfig(clip=0.5, noise_multiplier=0.0)
    with_it = private_k_vector(np.vstack([batch, outlier]), cfg, 1.0, rng)
    without = private_k_vector(batch, cfg, 1.0, rng)
    assert np.linalg.norm(with_it - without) <= 0.5 + 1e-12


def test_noise_has_the_configured_scale_and_an_empty_batch_releases_only_noise():
    cfg = DPConfig(clip=2.0, noise_multiplier=1.5)
    rng = np.random.default_rng(1)
    draws = np.stack([private_k_vector(np.zeros((0, 4)), cfg, 10.0, rng, k=4) for _ in range(4000)])
    assert draws.shape == (4000, 4)
    assert draws.std() == pytest.approx(1.5 * 2.0 / 10.0, rel=0.05)
    assert abs(draws.mean()) < 0.01
    with pytest.raises(ValueError, match="needs k"):
        private_k_vector(np.zeros((0, 4)), cfg, 10.0, rng)


def test_poisson_batches_have_the_expected_size():
    rng = np.random.default_rng(2)
    sizes = [poisson_batch(200, 0.1, rng).size for _ in range(2000)]
    assert np.mean(sizes) == pytest.approx(20, rel=0.03)
    assert len(set(sizes)) > 5  # the size itself is random, as the analysis assumes


def test_ledger_declines_past_its_budget_and_round_trips():
    cfg = DPConfig(noise_multiplier=2.0, sample_rate=0.2, epsilon_budget=4.0)
    ledger = PrivacyLedger(cfg)
    rounds = 0
    while ledger.can_afford(8):
        ledger.record(8)
        rounds += 1
    assert rounds > 0 and ledger.epsilon() <= 4.0 < ledger.epsilon_after(8)
    restored = PrivacyLedger(cfg, ledger.history)
    assert restored.epsilon() == ledger.epsilon() and restored.steps == 8 * rounds


def test_noise_for_a_target_epsilon_reaches_it():
    sigma = noise_for_epsilon(4.0, 1e-5, 0.2, 48)
    ledger = PrivacyLedger(DPConfig(noise_multiplier=sigma, sample_rate=0.2))
    ledger.record(48)
    assert 3.9 <= ledger.epsilon() <= 4.0
    assert noise_for_epsilon(math.inf, 1e-5, 0.2, 48) == 0.0


@pytest.mark.parametrize(
    "bad",
    [
        {"clip": 0},
        {"noise_multiplier": -1},
        {"sample_rate": 0},
        {"delta": 1},
        {"accountant": "gdp"},
    ],
)
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError, match="DP"):
        DPConfig(**bad)
