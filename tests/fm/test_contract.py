"""The BlackboxFM contract: validation, metering, budgets, spec strings."""

from __future__ import annotations

import numpy as np
import pytest

from baps_fed.fm.errors import FMInputError, QueryBudgetExceeded
from baps_fed.fm.sam_batched import BatchedSam
from baps_fed.fm.spec import FMSpecError, load_fm
from baps_fed.fm.torch_fm import TorchSamFM


@pytest.fixture
def fm(small_sam):
    return TorchSamFM(BatchedSam(small_sam), "small", max_batch=2)


def _query(b=3, h=48, w=40):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8)
    points = np.stack([rng.uniform(0, w, (b, 1)), rng.uniform(0, h, (b, 1))], -1)
    return images, points


def test_returns_float32_logits_at_input_size_and_meters(fm):
    images, points = _query()
    logits = fm.segment(images, points)
    assert logits.dtype == np.float32 and logits.shape == (3, 48, 40)
    assert np.isfinite(logits).all()
    fm.segment(images[:1], points[:1])
    assert (fm.meter.calls, fm.meter.images) == (2, 4)
    assert fm.meter.seconds > 0


def test_chunking_does_not_change_results(fm, small_sam):
    images, points = _query(b=5)
    whole = TorchSamFM(BatchedSam(small_sam), "whole", max_batch=64).segment(images, points)
    np.testing.assert_allclose(fm.segment(images, points), whole, rtol=1e-4, atol=1e-4)


def test_budget_stops_before_running(small_sam):
    fm = TorchSamFM(BatchedSam(small_sam), "small", budget_images=4)
    images, points = _query(b=3)
    fm.segment(images, points)
    with pytest.raises(QueryBudgetExceeded, match="budget of 4 images"):
        fm.segment(images, points)
    assert fm.meter.images == 3  # the refused call was not run nor counted


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda im, p: (im.astype(np.float32), p), "must be uint8"),
        (lambda im, p: (im[..., 0], p), r"\[B,H,W,3\]"),
        (lambda im, p: (np.concatenate([im, im[..., :1]], -1), p), "RGB"),
        (lambda im, p: (im, p[:2]), r"\[B,N,2\]"),
        (lambda im, p: (im, p + 100), "outside the 40x48 image"),
        (lambda im, p: (im, p * np.nan), "NaN"),
        (lambda im, p: (im[:0], p[:0]), "empty query"),
    ],
)
def test_bad_queries_are_rejected_with_a_clear_error(fm, mutate, message):
    images, points = mutate(*_query())
    with pytest.raises(FMInputError, match=message):
        fm.segment(images, points)
    assert fm.meter.calls == 0


def test_labels_must_be_binary(fm):
    images, points = _query()
    with pytest.raises(FMInputError, match="labels"):
        fm.segment(images, points, np.full((3, 1), 2))


def test_strided_views_are_accepted_like_their_copies(fm):
    images, points = _query()
    flipped = images[:, :, ::-1]  # negative strides: torch.from_numpy refuses these
    assert not flipped.flags.c_contiguous
    np.testing.assert_array_equal(
        fm.segment(flipped, points), fm.segment(np.ascontiguousarray(flipped), points)
    )


@pytest.mark.parametrize(
    ("spec", "kwargs", "names"),
    [
        ("nonsense", {}, ["'tiny'", "sam:vit_b|vit_l|vit_h:PATH", "medsam:PATH", "grpc://"]),
        ("sam:vit_b", {}, ["sam:ARCH:PATH", "medsam:PATH"]),
        ("grpc://127.0.0.1", {}, ["grpc://HOST:PORT"]),
        ("grpc://127.0.0.1:1?colour=red", {}, ["'colour'", "known: token"]),
        ("tiny", {"multimask": True}, ["multimask", "sam:ARCH:PATH"]),
    ],
)
def test_bad_specs_say_what_to_use(spec, kwargs, names):
    with pytest.raises(FMSpecError) as err:
        load_fm(spec, **kwargs)
    for name in names:
        assert name in str(err.value), (name, str(err.value))


@pytest.mark.parametrize(
    ("boxes", "message"),
    [
        (np.array([[1.0, 2.0, 30.0]] * 3), r"shape \[B,4\]"),
        (np.array([[1.0, 2.0, 30.0, np.nan]] * 3), "NaN or Inf"),
        (np.array([[30.0, 2.0, 10.0, 40.0]] * 3), "inverted"),
        (np.array([[5.0, 20.0, 30.0, 20.0]] * 3), "inverted or empty"),
        (np.array([[-1.0, 2.0, 30.0, 40.0]] * 3), "leaves the 40x48 image"),
        (np.array([[1.0, 2.0, 30.0, 49.0]] * 3), "leaves the 40x48 image"),
    ],
)
def test_bad_boxes_are_refused_with_what_is_wrong(fm, boxes, message):
    images, _ = _query()
    with pytest.raises(FMInputError, match=message):
        fm.segment(images, boxes=boxes)
    assert fm.meter.images == 0


def test_a_box_query_needs_no_points_and_boxes_may_come_as_b_1_4(fm):
    images, _ = _query()
    boxes = np.array([[2.0, 3.0, 30.0, 40.0]] * 3)
    out = fm.segment(images, boxes=boxes)
    assert out.shape == (3, 48, 40) and np.isfinite(out).all()
    np.testing.assert_array_equal(fm.segment(images, boxes=boxes[:, None]), out)
    with pytest.raises(FMInputError, match="needs a prompt"):
        fm.segment(images)


def test_a_prompt_kind_the_fm_does_not_accept_is_refused_not_dropped(small_sam):
    box_only = TorchSamFM(BatchedSam(small_sam), "box-only", prompt_kinds=frozenset({"box"}))
    images, points = _query()
    with pytest.raises(FMInputError, match="does not accept point prompts.*send boxes instead"):
        box_only.segment(images, points)
    boxes = np.array([[2.0, 3.0, 30.0, 40.0]] * 3)
    with pytest.raises(FMInputError, match="does not accept point prompts"):
        box_only.segment(images, points, boxes=boxes)  # not silently answered from the box
    assert box_only.segment(images, boxes=boxes).shape == (3, 48, 40)
