"""Box prompts from masks: the tight (MedSAM training) and loose (clinician) protocols."""

from __future__ import annotations

import numpy as np
import pytest

from baps_fed.data.boxes import BoxConfig, mask_box, sample_box
from baps_fed.data.points import EmptyMaskError
from baps_fed.data.prompts import PromptConfig, Prompts, sample_prompts, seeded_prompt


def _mask(h=100, w=120, box=(30, 20, 69, 59)):
    m = np.zeros((h, w), bool)
    x0, y0, x1, y1 = box
    m[y0 : y1 + 1, x0 : x1 + 1] = True
    return m


def test_mask_box_is_the_extreme_foreground_indices():
    np.testing.assert_array_equal(mask_box(_mask()), [30, 20, 69, 59])
    with pytest.raises(EmptyMaskError):
        mask_box(np.zeros((5, 5), bool))


def test_tight_boxes_move_each_side_out_by_at_most_the_shift():
    mask, cfg = _mask(), BoxConfig(protocol="tight", tight_shift=0.05)  # up to 6 px here
    rng = np.random.default_rng(0)
    boxes = np.stack([sample_box(mask, rng, cfg) for _ in range(300)])
    moved = np.abs(boxes - [30, 20, 69, 59])
    assert (boxes[:, :2] <= [30, 20]).all() and (boxes[:, 2:] >= [69, 59]).all()  # outwards
    assert moved.max() <= 6.0 + 1e-4 and moved.max() > 5.0  # 0..J, J = 0.05 x 120
    assert moved.mean() == pytest.approx(3.0, abs=0.4)  # uniform on [0, 6]


def test_loose_boxes_follow_margin_and_jitter_of_the_box_size():
    mask, cfg = _mask(400, 400, (150, 100, 249, 299)), BoxConfig()  # a 100 x 200 box
    rng = np.random.default_rng(1)
    boxes = np.stack([sample_box(mask, rng, cfg) for _ in range(2000)])
    out = np.array([150, 100, 249, 299]) - boxes
    out[:, 2:] *= -1  # outward moves, per side
    size = np.array([100, 200, 100, 200])
    frac = out / size
    np.testing.assert_allclose(frac.mean(0), 0.10, atol=0.01)  # the margin, on average
    assert frac.min() >= -0.05 - 1e-3 and frac.max() <= 0.25 + 1e-3  # +- 15 % jitter


def test_boxes_stay_inside_the_image_and_one_pixel_wide():
    corner = np.zeros((50, 50), bool)
    corner[0, 49] = True  # one pixel at the image's edge
    for protocol in ("tight", "loose"):
        cfg = BoxConfig(protocol=protocol, loose_margin=0.0, loose_jitter=1.0)
        rng = np.random.default_rng(2)
        for _ in range(200):
            x0, y0, x1, y1 = sample_box(corner, rng, cfg)
            assert 0 <= x0 < x1 <= 50 and 0 <= y0 < y1 <= 50


def test_evaluation_boxes_depend_only_on_seed_and_name():
    mask, cfg = _mask(), PromptConfig(kind="box")
    a = seeded_prompt(mask, "case-1", 0, cfg)
    np.testing.assert_array_equal(a, seeded_prompt(mask, "case-1", 0, cfg))
    assert not np.array_equal(a, seeded_prompt(mask, "case-2", 0, cfg))
    assert not np.array_equal(a, seeded_prompt(mask, "case-1", 1, cfg))


def test_prompt_batches_in_the_contracts_form():
    masks = np.stack([_mask()] * 3)
    rng = np.random.default_rng(0)
    boxes = sample_prompts(masks, np.array([0, 2]), rng, PromptConfig(kind="box"))
    assert boxes.kind == "box" and boxes.boxes.shape == (2, 4) and boxes.boxes.dtype == np.float32
    assert boxes.query().keys() == {"boxes"} and len(boxes.tile(3)) == 6
    points = sample_prompts(masks, np.array([1]), rng, PromptConfig())
    assert points.points.shape == (1, 1, 2) and points.query().keys() == {"points"}
    assert len(sample_prompts(masks, np.array([], int), rng, PromptConfig(kind="box"))) == 0
    with pytest.raises(ValueError, match="exactly one"):
        Prompts()


def test_bad_prompt_settings_are_refused():
    with pytest.raises(ValueError, match="unknown prompt kind"):
        PromptConfig(kind="scribble")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown box protocol"):
        BoxConfig(protocol="wide")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="loose_margin must be a fraction"):
        BoxConfig(loose_margin=1.5)
