"""ROC AUC, TPR at a fixed FPR and their bootstrap intervals on cases known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from baps_fed.privacy_audit.roc import auc, roc_curve, score_attack, tpr_at_fpr

M = np.array([True, True, False, False])


def test_auc_on_known_cases():
    assert auc(np.array([3.0, 2.0, 1.0, 0.0]), M) == 1.0
    assert auc(np.array([0.0, 1.0, 2.0, 3.0]), M) == 0.0
    assert auc(np.ones(4), M) == 0.5  # ties count one half
    # members 3 and 1, non-members 2 and 0: 3 > 2, 3 > 0, 1 < 2, 1 > 0
    assert auc(np.array([3.0, 1.0, 2.0, 0.0]), M) == 0.75


def test_the_roc_curve_and_tpr_at_a_fixed_fpr():
    scores = np.array([5.0, 4.0, 1.0, 3.0, 2.0, 0.0])
    members = np.array([True, True, True, False, False, False])
    fpr, tpr = roc_curve(scores, members)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert tpr_at_fpr(scores, members, 0.0) == pytest.approx(2 / 3)  # above every non-member
    assert tpr_at_fpr(scores, members, 0.34) == pytest.approx(2 / 3)
    assert tpr_at_fpr(scores, members, 2 / 3) == 1.0  # threshold 1: two non-members above
    assert tpr_at_fpr(scores, members, 1.0) == 1.0
    # the area under the curve is the AUC: 7 of 9 pairs ordered (1 is below 3 and 2)
    assert np.trapezoid(tpr, fpr) == pytest.approx(auc(scores, members)) == pytest.approx(7 / 9)


def test_perfect_separation_has_a_degenerate_interval():
    scores = np.concatenate([np.arange(50) + 100.0, np.arange(50)])
    members = np.arange(100) < 50
    result = score_attack(scores, members, resamples=200)
    assert (result.auc.value, result.auc.low, result.auc.high) == (1.0, 1.0, 1.0)
    assert result.tpr_01pct.value == 1.0


def test_chance_scores_give_an_interval_around_one_half_of_the_expected_width():
    rng = np.random.default_rng(0)
    scores, members = rng.normal(size=600), np.arange(600) < 300
    result = score_attack(scores, members, resamples=500)
    assert result.auc.low < 0.5 < result.auc.high
    assert result.auc.low <= result.auc.value <= result.auc.high
    # the AUC's standard error at 0.5 with 300 + 300 is sqrt(601 / (12 * 300 * 300)) = 0.0236
    assert result.auc.high - result.auc.low == pytest.approx(2 * 1.96 * 0.0236, rel=0.2)


def test_an_attack_needs_both_classes_and_finite_scores():
    with pytest.raises(ValueError, match="member"):
        auc(np.arange(3.0), np.ones(3, bool))
    with pytest.raises(ValueError, match="finite"):
        auc(np.array([np.nan, 1.0]), np.array([True, False]))


def test_the_unit_bootstrap_does_not_count_a_candidates_repeated_scores_as_new_evidence():
    """300 candidates each scored twice with the same score: the pool holds no more evidence
    than one run, so resampling candidates keeps one run's width; resampling scores as if they
    were independent would shrink it by about sqrt(2)."""
    rng = np.random.default_rng(1)
    scores, members = rng.normal(size=300), np.arange(300) < 150
    one = score_attack(scores, members, resamples=400)
    twice, flags = np.tile(scores, 2), np.tile(members, 2)
    naive = score_attack(twice, flags, resamples=400)
    by_unit = score_attack(twice, flags, resamples=400, units=np.tile(np.arange(300), 2))
    width = {k: r.auc.high - r.auc.low for k, r in (("one", one), ("naive", naive),
                                                     ("unit", by_unit))}  # fmt: skip
    assert width["unit"] == pytest.approx(width["one"], rel=0.25)
    assert width["naive"] < 0.85 * width["unit"]
    assert by_unit.auc.value == one.auc.value  # the point estimate is the pool's own AUC
