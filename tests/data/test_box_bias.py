"""A hospital's per-side box bias on loose boxes: none changes nothing, one side moves one side."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from baps_fed.data.boxes import NO_BIAS, BoxConfig, mask_box, parse_box_bias, sample_box
from baps_fed.data.prompts import PromptConfig, seeded_prompt


def _mask(h=400, w=400, box=(150, 100, 249, 299)) -> np.ndarray:
    m = np.zeros((h, w), bool)
    x0, y0, x1, y1 = box
    m[y0 : y1 + 1, x0 : x1 + 1] = True
    return m


def _box_before_bias(mask: np.ndarray, rng: np.random.Generator, cfg: BoxConfig) -> np.ndarray:
    """sample_box as it was before the bias (the loose protocol), kept here to compare bits."""
    h, w = mask.shape
    x0, y0, x1, y1 = mask_box(mask)
    size = np.array([x1 - x0 + 1, y1 - y0 + 1] * 2, dtype=np.float64)
    move = (cfg.loose_margin + rng.uniform(-cfg.loose_jitter, cfg.loose_jitter, 4)) * size
    box = np.array([x0 - move[0], y0 - move[1], x1 + move[2], y1 + move[3]])
    box = np.clip(box, 0, [w, h, w, h])
    box[2] = max(box[2], min(box[0] + 1, w))
    box[0] = min(box[0], box[2] - 1)
    box[3] = max(box[3], min(box[1] + 1, h))
    box[1] = min(box[1], box[3] - 1)
    return box.astype(np.float32)


@pytest.mark.parametrize("margin, jitter", [(0.10, 0.15), (0.0, 0.0), (0.25, 1.0)])
def test_no_bias_draws_the_boxes_of_before_bit_for_bit(margin, jitter):
    cfg = BoxConfig(loose_margin=margin, loose_jitter=jitter)
    assert cfg.loose_bias == NO_BIAS
    masks = [_mask(), _mask(64, 80, (0, 3, 79, 40)), _mask(50, 50, (49, 0, 49, 0))]
    for seed in range(5):
        new, old = np.random.default_rng(seed), np.random.default_rng(seed)
        for mask in masks * 20:
            assert (
                sample_box(mask, new, cfg).tobytes() == _box_before_bias(mask, old, cfg).tobytes()
            )


def test_evaluation_boxes_without_a_bias_are_those_of_before():
    mask, prompting = _mask(), PromptConfig(kind="box")
    rng = np.random.default_rng([7, zlib.crc32(b"case-9")])  # seeded_prompt's generator
    expected = _box_before_bias(mask, rng, prompting.box)
    assert seeded_prompt(mask, "case-9", 7, prompting).tobytes() == expected.tobytes()


def test_a_top_bias_moves_the_top_side_alone_by_its_fraction_of_the_height():
    mask, plain = _mask(), BoxConfig(loose_margin=0.1, loose_jitter=0.15)  # 100 wide, 200 high
    high = BoxConfig(loose_margin=0.1, loose_jitter=0.15, loose_bias=(0, 0.2, 0, 0))
    for seed in range(20):  # the same jitter draws: only the bias differs
        a = sample_box(mask, np.random.default_rng(seed), plain)
        b = sample_box(mask, np.random.default_rng(seed), high)
        np.testing.assert_allclose(a - b, [0, 0.2 * 200, 0, 0], atol=1e-4)  # top 40 px higher


def test_a_habit_of_drawing_high_and_wide_on_average():
    mask = _mask()
    cfg = BoxConfig(loose_margin=0.1, loose_jitter=0.15, loose_bias=(0.3, 0.2, 0.3, -0.1))
    rng = np.random.default_rng(1)
    boxes = np.stack([sample_box(mask, rng, cfg) for _ in range(2000)])
    out = np.array([150, 100, 249, 299]) - boxes
    out[:, 2:] *= -1  # outward moves, per side
    frac = out / [100, 200, 100, 200]
    np.testing.assert_allclose(frac.mean(0), [0.4, 0.3, 0.4, 0.0], atol=0.01)


def test_a_bias_that_crosses_the_box_still_leaves_one_pixel_inside_the_image():
    cfg = BoxConfig(loose_margin=0.0, loose_jitter=0.2, loose_bias=(-0.5, -0.5, -0.5, -0.5))
    rng = np.random.default_rng(3)
    for _ in range(200):
        x0, y0, x1, y1 = sample_box(_mask(), rng, cfg)
        assert 0 <= x0 < x1 <= 400 and 0 <= y0 < y1 <= 400


def test_the_bias_is_written_left_top_right_bottom():
    assert parse_box_bias("0,0.2,0,-0.1") == (0.0, 0.2, 0.0, -0.1)
    assert parse_box_bias(" 0.3, 0, 0.3 ,0 ") == (0.3, 0.0, 0.3, 0.0)
    assert parse_box_bias("") == NO_BIAS
    assert BoxConfig(loose_bias=[0, 0.2, 0, -0.1]).loose_bias == (0.0, 0.2, 0.0, -0.1)  # hashable
    hash(BoxConfig(loose_bias=[0, 0.2, 0, -0.1]))


@pytest.mark.parametrize("text", ["0,0.2,0", "0,0.2,0,-0.1,0", "top=0.2", "0;0.2;0;0", "a,b,c,d"])
def test_a_malformed_bias_is_refused_with_its_form(text):
    with pytest.raises(ValueError, match="left,top,right,bottom"):
        parse_box_bias(text)


@pytest.mark.parametrize("bias", [(0, 1.2, 0, 0), (-0.6, 0, 0, 0), (0, float("nan"), 0, 0)])
def test_a_bias_out_of_range_is_refused(bias):
    with pytest.raises(ValueError, match=r"one fraction in \[-0.5, 1\] per side"):
        BoxConfig(loose_bias=bias)
    text = ",".join(str(v) for v in bias)
    with pytest.raises(ValueError, match=r"\[-0.5, 1\]"):
        parse_box_bias(text)
