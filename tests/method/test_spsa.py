from __future__ import annotations

import io

import numpy as np
import pytest

from baps_fed.method.perturbations import SeedKey, perturbation, perturbations
from baps_fed.method.spsa import (
    GeassConfig,
    SpsaConfig,
    SpsaState,
    apply_update,
    average_diffs,
    c_at,
    current_c,
    estimate_gradient,
    lr_at,
    replay,
    step_perturbations,
)

# Unit perturbation scale and a constant schedule make hand computations exact: g = d / Delta.
UNIT = SpsaConfig(sp_avg=1, c=0.5, gamma=0.0, schedule="constant", lr=0.1, beta=0.4)


def _quadratic(dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(dim, dim))
    a = q @ q.T / dim + np.eye(dim)
    return a, rng.normal(size=dim)


def _loss(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """0.5 w^T A w + b^T w for w [..., dim]."""
    w = np.asarray(w, dtype=np.float64)
    return 0.5 * np.einsum("...i,ij,...j->...", w, a, w) + w @ b


# --- perturbations ---------------------------------------------------------------------------


def test_perturbation_is_a_pure_function_of_its_seed_parts():
    v = perturbation(2024, 3, 1, 7, 2, 6)
    assert v.dtype == np.float32 and v.shape == (6,)
    np.testing.assert_array_equal(v, perturbation(2024, 3, 1, 7, 2, 6))
    # Golden values: the stream must not change across machines or numpy versions (audit).
    golden = [-0.6317190527915955, 0.5348983407020569, -0.8749387860298157]
    np.testing.assert_array_equal(v[:3], np.array(golden, dtype=np.float32))
    for i in range(5):
        parts = [2024, 3, 1, 7, 2]
        parts[i] += 1
        assert not np.array_equal(v, perturbation(*parts, 6)), f"part {i} ignored"


def test_seed_parts_do_not_collide_across_word_boundaries():
    # numpy's SeedSequence alone maps [2**32, 0] and [0, 1, 0] to the same state.
    assert not np.array_equal(perturbation(2**32, 0, 0, 0, 0, 8), perturbation(0, 1, 0, 0, 0, 8))
    with pytest.raises(ValueError, match="round"):
        perturbation(0, -1, 0, 0, 0, 8)
    with pytest.raises(TypeError, match="site"):
        perturbation(0, 0, "a", 0, 0, 8)


def test_perturbation_distribution_and_stacking():
    d = perturbations(1, 2, 3, 4, 5, 4000)
    assert d.shape == (5, 4000) and d.dtype == np.float32
    np.testing.assert_array_equal(d[3], perturbation(1, 2, 3, 4, 3, 4000))
    mag = np.abs(d)
    assert mag.min() >= 0.5 and mag.max() <= 1.0
    assert abs(mag.mean() - 0.75) < 0.01
    assert abs((d > 0).mean() - 0.5) < 0.02


# --- estimator -------------------------------------------------------------------------------


def test_spsa_estimate_is_unbiased_on_a_quadratic():
    dim, c = 12, 0.01
    a, b = _quadratic(dim)
    w = np.random.default_rng(1).normal(size=dim)
    true = a @ w + b
    estimates, outer = [], np.zeros((dim, dim))
    for step in range(800):  # 800 steps x K=5 = 4000 perturbations
        deltas = perturbations(7, 0, 0, step, 5, dim)
        diffs = _loss(a, b, w + c * deltas) - _loss(a, b, w - c * deltas)
        g, n_used = estimate_gradient(diffs, deltas, c)
        assert n_used == 5
        estimates.append(g)
        dd = deltas.astype(np.float64)
        outer += np.einsum("ki,kj->ij", 1 / dd, dd)
    # E[Delta_j / Delta_i] = delta_ij for independent symmetric signs: unbiased to first order.
    outer /= 4000
    np.testing.assert_allclose(np.diag(outer), 1.0, atol=1e-12)
    assert np.abs(outer - np.eye(dim)).max() < 0.08
    mean = np.mean(estimates, axis=0)
    assert np.linalg.norm(mean - true) / np.linalg.norm(true) < 0.15


def test_estimate_matches_the_formula_and_averages_images_first():
    deltas = perturbations(0, 0, 0, 0, 3, 5)
    diffs = np.array([[0.1, -0.2, 0.3], [0.3, 0.0, 0.1]])
    g, n_used = estimate_gradient(diffs, deltas, 0.05)
    d = diffs.mean(0)
    expected = np.mean([d[k] / 0.1 / deltas[k].astype(np.float64) for k in range(3)], axis=0)
    assert n_used == 3 and g.dtype == np.float32
    np.testing.assert_allclose(g, expected, rtol=1e-6)


# --- NaN safety ------------------------------------------------------------------------------


def test_non_finite_entries_are_dropped_per_image_and_per_k():
    deltas = perturbations(0, 0, 0, 0, 3, 5)
    clean = np.array([[0.1, -0.2, 0.3], [0.3, 0.0, 0.1]])
    bad_image = np.vstack([clean, [[np.nan, np.inf, -np.inf]]])
    np.testing.assert_array_equal(
        estimate_gradient(bad_image, deltas, 0.05)[0], estimate_gradient(clean, deltas, 0.05)[0]
    )
    bad_k = clean.copy()
    bad_k[:, 1] = np.nan
    g, n_used = estimate_gradient(bad_k, deltas, 0.05)
    g_ref, _ = estimate_gradient(clean[:, [0, 2]], deltas[[0, 2]], 0.05)
    assert n_used == 2
    np.testing.assert_array_equal(g, g_ref)


def test_all_non_finite_diffs_skip_the_step():
    w = np.arange(5, dtype=np.float32)
    deltas = perturbations(0, 0, 0, 0, 2, 5)
    g, n_used = estimate_gradient(np.full((3, 2), np.nan), deltas, 0.01)
    assert n_used == 0 and not g.any()
    state = SpsaState(step=4, momentum=np.ones(5))
    w_new, new_state, info = apply_update(w, [np.nan, np.inf], deltas, state, SpsaConfig())
    np.testing.assert_array_equal(w_new, w)
    assert info.skipped and info.n_used == 0 and info.step == 4
    assert new_state.step == 5  # schedules and seeds move on
    np.testing.assert_array_equal(new_state.momentum, state.momentum)


# --- SPSA-GC ---------------------------------------------------------------------------------


def test_momentum_correction_matches_hand_computation():
    deltas = np.array([[1.0, -1.0, 0.5]], dtype=np.float32)  # g = d * [1, -1, 2]
    w, state = np.zeros(3, dtype=np.float32), SpsaState()
    expected = [[-0.14, 0.14, -0.28], [-0.436, 0.436, -0.872], [-0.3344, 0.3344, -0.6688]]
    momenta = [[1, -1, 2], [2.4, -2.4, 4.8], [-0.04, 0.04, -0.08]]
    for d, w_exp, m_exp in zip([1.0, 2.0, -1.0], expected, momenta, strict=True):
        w, state, info = apply_update(w, [d], deltas, state, UNIT)
        assert not info.skipped and info.lr == pytest.approx(0.1) and info.c == 0.5
        np.testing.assert_allclose(w, w_exp, rtol=1e-6)
        np.testing.assert_allclose(state.momentum, m_exp, rtol=1e-9, atol=1e-12)
    assert state.step == 3


def test_schedules():
    baps = SpsaConfig()  # a = 1, 0.33 every 300 steps
    assert [lr_at(baps, s) for s in (0, 299, 300, 600, 899)] == pytest.approx(
        [1.0, 1.0, 0.33, 0.33**2, 0.33**2]
    )
    vip = SpsaConfig(schedule="blackvip", lr=0.01, beta=0.9)  # a / (k + o)^alpha, k = step + 1
    assert lr_at(vip, 0) == pytest.approx(0.01 / 2**0.4)
    assert lr_at(vip, 9) == pytest.approx(0.01 / 11**0.4)
    assert lr_at(SpsaConfig(schedule="constant", lr=0.3), 10_000) == 0.3
    assert c_at(baps, 0) == pytest.approx(0.01)
    assert c_at(baps, 9) == pytest.approx(0.01 / 10**0.1)
    assert current_c(SpsaState(step=9), baps) == pytest.approx(0.01 / 10**0.1)


def test_sign_and_normalized_updates_have_documented_sizes():
    dim, lr = 50, 0.25
    deltas = perturbations(3, 0, 0, 0, 2, dim)
    w0 = np.zeros(dim, dtype=np.float32)
    raw_w, _, _ = apply_update(w0, [0.3, -0.1], deltas, SpsaState(), SpsaConfig(lr=lr))
    sign_w, _, _ = apply_update(
        w0, [0.3, -0.1], deltas, SpsaState(), SpsaConfig(lr=lr, update="sign")
    )
    np.testing.assert_array_equal(np.abs(sign_w), lr)  # every coordinate moves by exactly lr
    np.testing.assert_array_equal(np.sign(sign_w), np.sign(raw_w))
    norm_w, _, _ = apply_update(
        w0, [0.3, -0.1], deltas, SpsaState(), SpsaConfig(lr=lr, update="normalized")
    )
    assert np.linalg.norm(norm_w) == pytest.approx(lr * np.sqrt(dim), rel=1e-5)  # RMS step = lr
    np.testing.assert_allclose(
        norm_w / np.linalg.norm(norm_w), raw_w / np.linalg.norm(raw_w), rtol=1e-5
    )


def test_short_optimisation_lowers_a_quadratic():
    dim = 10
    a, b = _quadratic(dim, seed=2)
    w_star = np.linalg.solve(a, -b)
    cfg = SpsaConfig(schedule="constant", lr=0.02, c=0.01)
    w = (w_star + 2.0).astype(np.float32)
    state, key = SpsaState(), SeedKey(11, 0, 0)
    start = _loss(a, b, w) - _loss(a, b, w_star)
    for _ in range(200):
        deltas = step_perturbations(key, state, cfg, dim)
        c = current_c(state, cfg)
        diffs = _loss(a, b, w + c * deltas) - _loss(a, b, w - c * deltas)
        w, state, _ = apply_update(w, diffs, deltas, state, cfg)
    assert _loss(a, b, w) - _loss(a, b, w_star) < 0.01 * start


# --- GEASS -----------------------------------------------------------------------------------


def test_geass_strikes_after_patience_low_norm_steps_then_recovers():
    geass = GeassConfig(enabled=True, threshold_per_param=1.0, patience=3, cooldown=2)
    deltas = np.ones((1, 4), dtype=np.float32)  # g = d / (2c) per coordinate, ||g|| = 2|g_i|
    low, high = [0.5], [10.0]  # ||g|| = 1 and 20 against a threshold of 1 * dim = 4
    w, state = np.zeros(4, dtype=np.float32), SpsaState()

    def run(d):
        nonlocal w, state
        c_before = current_c(state, UNIT, geass)
        w_before, m_before = w, state.momentum
        w, state, info = apply_update(w, d, deltas, state, UNIT, geass)
        assert info.c == c_before
        return info, w - w_before, m_before

    for d in (low, low, high, low, low):  # the high-norm step resets the counter
        assert not run(d)[0].striking
    assert state.low_count == 2 and state.strike_left == 0
    assert not run(low)[0].striking  # third consecutive low step: the strike is armed
    assert state.strike_left == 2 and current_c(state, UNIT, geass) == 0.5 * geass.eta2
    for _ in range(2):
        info, dw, m_before = run(low)
        assert info.striking and info.lr == pytest.approx(0.1 * geass.eta1)
        assert info.c == 0.5 * geass.eta2
        g = 0.5 / (2 * info.c)  # momentum off: step = g, and momentum is left untouched
        np.testing.assert_allclose(dw, -info.lr * g, rtol=1e-6)
        np.testing.assert_array_equal(state.momentum, m_before)
    assert state.strike_left == 0 and state.low_count == 0
    info, dw, m_before = run(low)  # back to normal, counting from zero again
    assert not info.striking and info.lr == pytest.approx(0.1) and info.c == 0.5
    np.testing.assert_allclose(state.momentum, 0.4 * m_before + 0.5)
    run(low)
    assert state.strike_left == 0
    run(low)
    assert state.strike_left == 2


def test_geass_disabled_never_strikes():
    deltas = np.ones((1, 4), dtype=np.float32)
    w, state = np.zeros(4, dtype=np.float32), SpsaState()
    for _ in range(30):
        w, state, info = apply_update(w, [1e-9], deltas, state, UNIT, GeassConfig())
        assert not info.striking
    assert state.strike_left == 0 and state.low_count == 0


# --- zero-estimate quirk ---------------------------------------------------------------------


def test_zero_estimate_c_boost_is_opt_in():
    deltas = perturbations(0, 0, 0, 0, 2, 4)
    w = np.zeros(4, dtype=np.float32)
    _, off, _ = apply_update(w, [0.0, 0.0], deltas, SpsaState(), SpsaConfig())
    assert off.c_mult == 1.0
    quirk = SpsaConfig(zero_estimate_c_boost=10.0)
    _, on, _ = apply_update(w, [0.0, 0.0], deltas, SpsaState(), quirk)
    assert on.c_mult == 10.0 and current_c(on, quirk) == pytest.approx(10 * c_at(quirk, 1))
    _, kept, _ = apply_update(w, [0.0, 1e-3], deltas, on, quirk)
    assert kept.c_mult == 10.0


# --- replay and checkpoints ------------------------------------------------------------------


def _train(w, state, cfg, geass, key, steps, a, b):
    """A site's loop on a noisy per-image quadratic; returns w, state and the diffs it sent."""
    rng = np.random.default_rng(5)
    sent = []
    for _ in range(steps):
        deltas = step_perturbations(key, state, cfg, w.size)
        c = current_c(state, cfg, geass)
        noise = rng.normal(scale=0.01, size=(4, 1))  # 4 images
        lp = _loss(a, b, w + c * deltas)[None] + noise
        lm = _loss(a, b, w - c * deltas)[None] + noise * 0.5
        diffs = lp - lm
        diffs[rng.integers(4), rng.integers(cfg.sp_avg)] = np.nan
        sent.append(diffs)
        w, state, _ = apply_update(w, diffs, deltas, state, cfg, geass)
    return w, state, sent


@pytest.mark.parametrize("update", ["raw", "normalized"])
def test_replay_from_seeds_and_diffs_is_bit_exact(update):
    dim = 16
    a, b = _quadratic(dim, seed=3)
    cfg = SpsaConfig(schedule="blackvip", lr=0.05, update=update)
    geass = GeassConfig(enabled=True, threshold_per_param=0.5, patience=2)
    key, w0 = SeedKey(99, 4, 2), np.full(dim, 0.5, dtype=np.float32)
    w, state, sent = _train(w0, SpsaState(), cfg, geass, key, 25, a, b)
    w_r, state_r = replay(w0, sent, SpsaState(), cfg, geass, key)
    np.testing.assert_array_equal(w_r, w)
    assert state_r.to_dict().keys() == state.to_dict().keys()
    np.testing.assert_array_equal(state_r.momentum, state.momentum)
    # What a site would send instead of per-image diffs: the image-averaged K-vectors.
    w_k, _ = replay(w0, [average_diffs(d) for d in sent], SpsaState(), cfg, geass, key)
    np.testing.assert_array_equal(w_k, w)
    w_other, _ = replay(w0, sent, SpsaState(), cfg, geass, SeedKey(99, 4, 3))
    assert not np.array_equal(w_other, w)


def test_state_round_trip_resumes_exactly_and_inputs_are_not_mutated():
    dim = 8
    a, b = _quadratic(dim, seed=4)
    cfg, geass, key = SpsaConfig(lr=0.05), GeassConfig(enabled=True), SeedKey(1, 0, 0)
    w, state, _ = _train(np.ones(dim, dtype=np.float32), SpsaState(), cfg, geass, key, 3, a, b)
    buf = io.BytesIO()
    np.savez(buf, **state.to_dict())
    buf.seek(0)
    with np.load(buf) as f:
        restored = SpsaState.from_dict(dict(f))
    assert SpsaState.from_dict(SpsaState().to_dict()).momentum is None

    deltas = step_perturbations(key, state, cfg, dim)
    diffs = np.array([[0.02, -0.01, 0.03, 0.0, 0.01]])
    w_copy, diffs_copy, m_copy = w.copy(), diffs.copy(), state.momentum.copy()
    w1, s1, _ = apply_update(w, diffs, deltas, state, cfg, geass)
    w2, s2, _ = apply_update(w, diffs, deltas, restored, cfg, geass)
    np.testing.assert_array_equal(w1, w2)
    np.testing.assert_array_equal(s1.momentum, s2.momentum)
    assert (s1.step, s1.low_count, s1.strike_left, s1.c_mult) == (
        s2.step,
        s2.low_count,
        s2.strike_left,
        s2.c_mult,
    )
    np.testing.assert_array_equal(w, w_copy)
    np.testing.assert_array_equal(diffs, diffs_copy)
    np.testing.assert_array_equal(state.momentum, m_copy)
    assert not s1.momentum.flags.writeable
