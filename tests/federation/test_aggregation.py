"""The aggregation rules and the server optimiser on small hand-made arrays (pure numpy)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, RecordDict
from flwr.serverapp.strategy.multikrum import select_multikrum

from baps_fed.federation.aggregation import (
    aggregate_updates,
    combine_scalars,
    krum_select,
    reject_reason,
    trimmed_count,
    update_bound,
    weighted_mean,
)
from baps_fed.federation.server_optimizer import ServerOptConfig, ServerOptimizer

# -- weighted mean ----------------------------------------------------------------------------


def test_weighted_mean_by_example_counts_hand_computed():
    updates = [np.array([1.0, 2.0]), np.array([3.0, 6.0]), np.array([5.0, 10.0])]
    # (1 * [1, 2] + 2 * [3, 6] + 1 * [5, 10]) / 4 = [12, 24] / 4
    np.testing.assert_allclose(weighted_mean(updates, [1, 2, 1]), [3.0, 6.0])
    # counts 10 and 30: 0.25 * a + 0.75 * b
    np.testing.assert_allclose(weighted_mean(updates[:2], [10, 30]), [2.5, 5.0])
    # a site with no examples does not count; the mean is the other one's update
    np.testing.assert_array_equal(weighted_mean(updates[:2], [0, 7]), updates[1])


def test_weighted_mean_accumulates_in_float64():
    big = np.float32(1e8)
    updates = [np.array([big], np.float32), np.array([1.0], np.float32)]
    out = weighted_mean(updates, [1, 1])
    assert out.dtype == np.float64
    assert out[0] == (1e8 + 1.0) / 2


@pytest.mark.parametrize(
    "updates, weights, message",
    [
        ([], [], "no updates"),
        ([np.zeros(2), np.zeros(2)], [1], "2 updates but 1 weights"),
        ([np.zeros(2), np.zeros(2)], [1, -1], "positive total"),
        ([np.zeros(2), np.zeros(2)], [0, 0], "positive total"),
        ([np.zeros(2), np.zeros((2, 1))], [1, 1], "differ in shape"),
        ([np.zeros(2), np.zeros(3)], [1, 1], "differ in shape"),
    ],
)
def test_weighted_mean_refuses_bad_weights_and_shapes(updates, weights, message):
    with pytest.raises(ValueError, match=message):
        weighted_mean(updates, weights)


# -- coordinate-wise median and trimmed mean --------------------------------------------------

# six sites, two coordinates; site 2 is the outlier and claims many examples
SITES = [
    np.array([1.0, 0.0]),
    np.array([5.0, 4.0]),
    np.array([1000.0, -500.0]),
    np.array([2.0, 1.0]),
    np.array([8.0, 6.0]),
    np.array([3.0, 2.0]),
]
CLAIMS = [1, 1, 100, 1, 1, 1]


def test_coordinate_median_with_one_outlier():
    # column 0 sorted: 1 2 3 5 8 1000 -> (3 + 5) / 2; column 1: -500 0 1 2 4 6 -> (1 + 2) / 2
    median = aggregate_updates(SITES, CLAIMS, "median")
    np.testing.assert_array_equal(median, [4.0, 1.5])
    assert median.dtype == np.float32
    # unweighted: the outlier's claimed example count changes nothing
    np.testing.assert_array_equal(aggregate_updates(SITES, [1] * 6, "median"), median)


def test_coordinate_trimmed_mean_with_one_outlier():
    # trim 0.2 of 6 sites: one cut at each end; column 0 keeps 2 3 5 8, column 1 keeps 0 1 2 4
    trimmed = aggregate_updates(SITES, CLAIMS, "trimmed-mean", trim=0.2)
    np.testing.assert_allclose(trimmed, [18 / 4, 7 / 4])
    assert trimmed.dtype == np.float32
    # trim 0.4: two cut at each end, the middle two: the median
    np.testing.assert_allclose(aggregate_updates(SITES, CLAIMS, "trimmed-mean", trim=0.4), [4, 1.5])
    # trim 0: nothing cut, the plain (unweighted) mean, outlier and all
    plain = aggregate_updates(SITES, CLAIMS, "trimmed-mean", trim=0.0)
    np.testing.assert_allclose(plain, [1019 / 6, -487 / 6], rtol=1e-6)
    # while the example-weighted mean follows the outlier's claim
    mean = aggregate_updates(SITES, CLAIMS, "mean")
    np.testing.assert_allclose(mean, (np.sum(SITES, axis=0) + 99 * SITES[2]) / 105)


@pytest.mark.parametrize(
    "n, trim, cut",
    [
        (2, 0.0, 0),
        (2, 0.2, 0),  # two sites: cutting one at each end would leave none
        (2, 0.49, 0),
        (3, 0.0, 0),
        (3, 0.2, 1),  # floor(0.6) = 0, but three sites cut at least one
        (3, 0.49, 1),
        (4, 0.0, 0),
        (4, 0.2, 1),
        (4, 0.49, 1),  # floor(1.96) = 1
        (10, 0.0, 0),
        (10, 0.2, 2),
        (10, 0.49, 4),  # floor(4.9) = 4: two sites left
        (1, 0.49, 0),
    ],
)
def test_trimmed_count_edge_cases(n, trim, cut):
    assert trimmed_count(n, trim) == cut
    assert n - 2 * cut >= 1  # something is always left to average


@pytest.mark.parametrize("trim", [-0.1, 0.5, 0.7])
def test_trimmed_count_refuses_a_trim_outside_zero_to_half(trim):
    with pytest.raises(ValueError, match="trim must be"):
        trimmed_count(5, trim)


def test_aggregate_updates_names_what_it_cannot_do():
    with pytest.raises(ValueError, match="combine_scalars"):
        aggregate_updates(SITES, CLAIMS, "scalar-median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="aggregation must be one of"):
        aggregate_updates(SITES, CLAIMS, "geometric-median")  # type: ignore[arg-type]


# -- Krum ---------------------------------------------------------------------------------------


def test_krum_picks_the_cluster_and_leaves_the_far_outlier_out():
    cluster = [
        np.array([0.0, 0.0]),
        np.array([0.1, 0.0]),
        np.array([0.0, 0.1]),
        np.array([0.1, 0.1]),
    ]
    far = np.array([50.0, -50.0])
    updates = [cluster[0], far, *cluster[1:]]  # the outlier is not last
    # n = 5, f = 1: each score sums the 2 nearest squared distances. Every cluster point has
    # two neighbours at 0.01, so all four score 0.02, the outlier about 2 * 5000.
    chosen = krum_select(updates, malicious=1, keep=4)
    assert sorted(chosen) == [0, 2, 3, 4]
    assert 1 not in krum_select(updates, malicious=1, keep=1)
    multi = aggregate_updates(updates, [1, 1000, 1, 1, 1], "multi-krum", malicious=1)
    np.testing.assert_allclose(multi, [0.05, 0.05])
    krum = aggregate_updates(updates, [1, 1000, 1, 1, 1], "krum", malicious=1)
    assert any(np.array_equal(krum, c) for c in cluster)


def test_krum_scores_hand_computed():
    # on a line: 0, 1, 3, 10; n = 4, f = 1 -> one nearest neighbour each
    updates = [np.array([v]) for v in (0.0, 1.0, 3.0, 10.0)]
    # scores: 0 -> 1, 1 -> 1, 3 -> 4, 10 -> 49
    assert krum_select(updates, malicious=1, keep=3) == [0, 1, 2]
    # f = 0: two nearest: 0 -> 1 + 9, 1 -> 1 + 4, 3 -> 4 + 9, 10 -> 49 + 81
    assert krum_select(updates, malicious=0, keep=4) == [1, 0, 2, 3]


def _flower_choice(updates: list[np.ndarray], malicious: int, keep: int) -> list[int]:
    contents = [RecordDict({"arrays": ArrayRecord({"u": Array(u)})}) for u in updates]
    chosen = select_multikrum(contents, malicious, keep)
    return [next(i for i, c in enumerate(contents) if c is pick) for pick in chosen]


def test_krum_choice_equals_flowers_multikrum_on_random_cases():
    rng = np.random.default_rng(42)
    for _ in range(50):
        n = int(rng.integers(3, 10))
        dim = int(rng.integers(1, 20))
        malicious = int(rng.integers(0, n))
        keep = int(rng.integers(1, n + 1))
        updates = [rng.normal(0, 1, dim).astype(np.float32) for _ in range(n)]
        for i in rng.choice(n, size=int(rng.integers(0, 2)), replace=False):
            updates[i] = updates[i] * 30  # sometimes a far outlier
        ours = krum_select(updates, malicious, keep)
        assert ours == _flower_choice(updates, malicious, keep), (n, dim, malicious, keep)


# -- scalar rules ----------------------------------------------------------------------------

# five sites' [1, 3] scalars: column 0 has an outlier, column 1 non-finite values, column 2
# no finite value at all
NAN, INF = np.nan, np.inf
SCALARS = [
    np.array([[1.0, NAN, NAN]]),
    np.array([[7.0, 3.0, NAN]]),
    np.array([[100.0, INF, NAN]]),
    np.array([[2.0, 5.0, -INF]]),
    np.array([[6.0, NAN, NAN]]),
]


def test_combine_scalars_median_leaves_nan_out():
    out = combine_scalars(SCALARS, "scalar-median")
    assert out.dtype == np.float32 and out.shape == (1, 3)
    np.testing.assert_array_equal(out[0, :2], [6.0, 4.0])  # 1 2 6 7 100 -> 6; 3 5 -> 4
    assert np.isnan(out[0, 2])  # no site measured it: stays NaN, a skipped estimate


def test_combine_scalars_trimmed_mean_leaves_nan_out():
    out = combine_scalars(SCALARS, "scalar-trimmed-mean", trim=0.2)
    # column 0: 5 values, one cut at each end: 2 6 7 -> 5; column 1: 2 values, none cut
    np.testing.assert_allclose(out[0, :2], [5.0, 4.0])
    assert np.isnan(out[0, 2])


def test_combine_scalars_refuses_bad_input():
    with pytest.raises(ValueError, match="no scalars"):
        combine_scalars([], "scalar-median")
    with pytest.raises(ValueError, match="differ in shape"):
        combine_scalars([np.zeros((2, 2)), np.zeros((2, 3))], "scalar-median")
    with pytest.raises(ValueError, match="scalar aggregation must be"):
        combine_scalars([np.zeros((1, 2))], "median")


# -- the update guard ------------------------------------------------------------------------


def test_sign_bound_is_steps_times_lr_exactly():
    bound = update_bound(local_steps=8, lr=0.02, update="sign", dim=72)
    assert bound == pytest.approx(0.16, rel=2e-5)
    # an honest sign round in float32: every coordinate moved 8 x 0.02, either way
    honest = np.where(np.arange(72) % 2 == 0, 0.16, -0.16).astype(np.float32)
    assert reject_reason(honest, bound) is None
    assert reject_reason(np.zeros(0, np.float32), bound) is None
    assert reject_reason(np.full(72, 0.16 * (1 + 1e-4)), bound) is not None


def test_normalized_and_raw_bounds():
    assert update_bound(4, 0.5, "normalized", 9) == pytest.approx(4 * 0.5 * 3, rel=2e-5)
    assert update_bound(4, 0.5, "raw", 9) == float("inf")
    assert reject_reason(np.array([1e30]), update_bound(4, 0.5, "raw", 1)) is None


def test_reject_reason_refuses_nan_and_inf_even_without_a_bound():
    reason = reject_reason(np.array([0.0, np.nan, 1.0, -np.inf]), float("inf"))
    assert reason is not None and "2 non-finite" in reason


def test_reject_reason_names_the_coordinate_beyond_the_bound():
    reason = reject_reason(np.array([0.01, -0.5, 0.02]), 0.16)
    assert reason is not None
    assert "0.5" in reason and "0.16" in reason and "beyond" in reason


# -- the server optimiser --------------------------------------------------------------------


def test_fedavg_one_and_two_steps():
    opt = ServerOptimizer(ServerOptConfig(name="fedavg", lr=0.5))
    theta = opt.step(np.array([1.0, 2.0], np.float32), np.array([2.0, -4.0]))
    assert theta.dtype == np.float32
    np.testing.assert_allclose(theta, [2.0, 0.0])
    np.testing.assert_allclose(opt.step(theta, np.array([1.0, 1.0])), [2.5, 0.5])
    assert opt.state == {}  # plain FedAvg keeps nothing


def test_fedavgm_one_and_two_steps():
    opt = ServerOptimizer(ServerOptConfig(name="fedavgm", lr=0.5, momentum=0.9))
    theta = opt.step(np.zeros(2, np.float32), np.array([1.0, -2.0]))
    np.testing.assert_allclose(theta, [0.5, -1.0])  # m1 = d1
    np.testing.assert_allclose(opt.state["m"], [1.0, -2.0])
    theta = opt.step(theta, np.array([1.0, 0.0]))
    # m2 = 0.9 * [1, -2] + [1, 0] = [1.9, -1.8]; theta2 = [0.5, -1] + 0.5 * m2
    np.testing.assert_allclose(opt.state["m"], [1.9, -1.8])
    np.testing.assert_allclose(theta, [1.45, -1.9], rtol=1e-6)


def test_fedadam_one_and_two_steps():
    cfg = ServerOptConfig(name="fedadam", lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    opt = ServerOptimizer(cfg)
    theta = opt.step(np.zeros(2, np.float32), np.array([1.0, -2.0]))
    # m1 = 0.1 * d = [0.1, -0.2]; v1 = 0.01 * d^2 = [0.01, 0.04]; sqrt(v1) = [0.1, 0.2]
    np.testing.assert_allclose(opt.state["m"], [0.1, -0.2])
    np.testing.assert_allclose(opt.state["v"], [0.01, 0.04])
    first = np.array([0.1 * 0.1 / 0.101, 0.1 * -0.2 / 0.201])
    np.testing.assert_allclose(theta, first, rtol=1e-6)
    theta = opt.step(theta, np.array([1.0, 0.0]))
    # m2 = 0.9 * m1 + 0.1 * [1, 0] = [0.19, -0.18]; v2 = 0.99 * v1 + 0.01 * [1, 0]
    np.testing.assert_allclose(opt.state["m"], [0.19, -0.18])
    np.testing.assert_allclose(opt.state["v"], [0.0199, 0.0396])
    step = np.array([0.19 / (np.sqrt(0.0199) + 1e-3), -0.18 / (np.sqrt(0.0396) + 1e-3)])
    np.testing.assert_allclose(theta, first + 0.1 * step, rtol=1e-6)


def _through_npz(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The state as a checkpoint stores and reads it."""
    buf = io.BytesIO()
    np.savez(buf, **state)
    buf.seek(0)
    with np.load(buf) as z:
        return {k: z[k].copy() for k in z.files}


@pytest.mark.parametrize("name", ["fedavg", "fedavgm", "fedadam"])
def test_an_optimizer_built_from_state_continues_identically(name):
    cfg = ServerOptConfig(name=name, lr=0.3)
    rng = np.random.default_rng(7)
    updates = [rng.normal(size=4) for _ in range(5)]
    opt = ServerOptimizer(cfg)
    theta = np.zeros(4, np.float32)
    for u in updates[:3]:
        theta = opt.step(theta, u)
    saved = _through_npz(opt.state)
    resumed = ServerOptimizer(cfg, saved)
    if name != "fedavg":
        assert resumed.state.keys() == opt.state.keys() and resumed.state
        # a fresh optimiser (the state lost) would take another step
        fresh = ServerOptimizer(cfg).step(theta, updates[3])
        again = ServerOptimizer(cfg, saved).step(theta, updates[3])
        assert not np.array_equal(fresh, again)
    a, b = theta, theta.copy()
    for u in updates[3:]:
        a, b = opt.step(a, u), resumed.step(b, u)
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", [{"name": "sgd"}, {"lr": 0.0}, {"lr": -1.0}])
def test_server_opt_config_refuses_bad_settings(bad):
    with pytest.raises(ValueError):
        ServerOptConfig(**bad)
