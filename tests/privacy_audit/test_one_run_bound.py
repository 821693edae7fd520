"""The one-run epsilon lower bound against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from baps_fed.privacy_audit.one_run_bound import ceiling, epsilon_lower_bound, p_value


def test_every_guess_right_without_delta_is_the_logit_of_beta_to_the_1_over_r():
    # p_value = p^10 <= 0.05  <=>  p <= 0.05^(1/10) = 0.741134  <=>  eps <= ln(p / (1 - p))
    p = 0.05**0.1
    assert p == pytest.approx(0.741134, abs=1e-6)
    assert epsilon_lower_bound(10, 10, 10, 0.0, 0.05) == pytest.approx(math.log(p / (1 - p)))
    assert epsilon_lower_bound(10, 10, 10, 0.0, 0.05) == pytest.approx(1.051873, abs=1e-5)
    assert ceiling(10, 0.05) == pytest.approx(1.051873, abs=1e-5)


def test_at_epsilon_zero_the_p_value_is_a_fair_coins_tail():
    # 8 or more heads in 10 fair flips: (45 + 10 + 1) / 1024
    assert p_value(10, 10, 8, 0.0, 0.0) == pytest.approx(56 / 1024)
    assert p_value(10, 10, 0, 3.0, 0.0) == 1.0


def test_the_delta_term_by_hand():
    # one canary, one guess, right: P[B >= 1] + 2 delta P[1 > B >= 0] / 1 = p + 2 delta (1 - p)
    eps, delta = 0.7, 0.01
    p = math.exp(eps) / (1 + math.exp(eps))
    assert p_value(1, 1, 1, eps, delta) == pytest.approx(p + 2 * delta * (1 - p))


def test_chance_level_guessing_certifies_nothing():
    assert epsilon_lower_bound(100, 40, 20, 1e-5, 0.05) == 0.0
    assert epsilon_lower_bound(100, 40, 0, 1e-5, 0.05) == 0.0


def test_more_correct_guesses_certify_more_and_delta_only_lowers_the_bound():
    bounds = [epsilon_lower_bound(400, 40, v, 0.0, 0.05) for v in (30, 35, 38, 40)]
    assert bounds == sorted(bounds) and bounds[0] > 0
    assert epsilon_lower_bound(400, 40, 38, 1e-5, 0.05) <= bounds[2]


def test_the_bound_is_where_the_p_value_crosses_beta():
    eps = epsilon_lower_bound(400, 40, 36, 1e-5, 0.0125)
    assert p_value(400, 40, 36, eps, 1e-5) <= 0.0125 < p_value(400, 40, 36, eps + 1e-6, 1e-5)


@pytest.mark.parametrize("args", [(10, 11, 5), (10, 5, 6), (10, 5, -1)])
def test_impossible_counts_are_refused(args):
    with pytest.raises(ValueError, match="correct"):
        epsilon_lower_bound(*args)
