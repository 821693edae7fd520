from __future__ import annotations

import numpy as np
import pytest

from baps_fed.data.points import EmptyMaskError, sample_point
from baps_fed.data.prompts import POINT, seeded_prompt
from baps_fed.data.sample import Sample
from baps_fed.evaluation.metrics import dice_per_image, hd95, iou_per_image


def test_dice_and_iou_known_values():
    a = np.zeros((1, 10, 10), bool)
    b = np.zeros((1, 10, 10), bool)
    a[0, :, :4] = True  # 40 pixels
    b[0, :, 2:6] = True  # 40 pixels, 20 shared
    assert dice_per_image(a, b)[0] == pytest.approx(0.5)
    assert iou_per_image(a, b)[0] == pytest.approx(20 / 60)
    empty = np.zeros((1, 10, 10), bool)
    assert dice_per_image(empty, empty)[0] == 1.0
    assert dice_per_image(a, empty)[0] == 0.0


def test_hd95_of_a_shifted_square():
    a = np.zeros((40, 40), bool)
    a[10:20, 10:20] = True
    b = np.roll(a, 3, axis=1)
    assert hd95(a, a) == 0.0
    assert hd95(a, b) == pytest.approx(3.0)
    assert hd95(a, np.zeros_like(a)) == pytest.approx(np.hypot(40, 40))


def test_uniform_points_fall_inside_and_are_seeded():
    mask = np.zeros((30, 30), bool)
    mask[5:9, 20:27] = True
    pts = [sample_point(mask, np.random.default_rng(s)) for s in range(50)]
    assert all(mask[int(y), int(x)] for x, y in pts)
    assert len({tuple(p) for p in pts}) > 5
    np.testing.assert_array_equal(
        sample_point(mask, np.random.default_rng(7)), sample_point(mask, np.random.default_rng(7))
    )


def test_centroid_snaps_into_a_ring():
    yy, xx = np.mgrid[:41, :41]
    ring = (np.hypot(yy - 20, xx - 20) < 15) & (np.hypot(yy - 20, xx - 20) > 10)
    x, y = sample_point(ring, np.random.default_rng(0), "centroid")
    assert ring[int(y), int(x)]


def test_empty_mask_and_unknown_mode():
    with pytest.raises(EmptyMaskError):
        sample_point(np.zeros((5, 5), bool), np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown point mode"):
        sample_point(np.ones((5, 5), bool), np.random.default_rng(0), "box")


def test_evaluation_point_depends_only_on_seed_and_name():
    mask = np.ones((20, 20), bool)
    s = Sample(np.zeros((20, 20, 3), np.uint8), mask, "case-1")
    np.testing.assert_array_equal(
        seeded_prompt(s.mask, s.name, 0, POINT), seeded_prompt(s.mask, s.name, 0, POINT)
    )
    assert not np.array_equal(
        seeded_prompt(s.mask, s.name, 0, POINT), seeded_prompt(s.mask, s.name, 1, POINT)
    )


def test_losses_match_torch_and_order_good_over_bad_predictions():
    import torch
    import torch.nn.functional as F

    from baps_fed.evaluation.metrics import LOSSES, bce_loss, soft_dice_loss

    rng = np.random.default_rng(0)
    masks = rng.random((2, 8, 8)) > 0.5
    logits = rng.normal(0, 3, (2, 8, 8))
    ref = F.binary_cross_entropy_with_logits(
        torch.tensor(logits), torch.tensor(masks, dtype=torch.float64), reduction="none"
    ).mean((1, 2))
    np.testing.assert_allclose(bce_loss(logits, masks), ref.numpy(), rtol=1e-10)
    good, bad = np.where(masks, 5.0, -5.0), np.where(masks, -5.0, 5.0)
    for loss in LOSSES.values():
        assert (loss(good, masks) < loss(bad, masks)).all()
    assert soft_dice_loss(np.full((1, 4, 4), 50.0), np.ones((1, 4, 4), bool))[0] < 1e-6
