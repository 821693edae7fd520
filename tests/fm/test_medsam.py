"""``medsam:PATH`` answers as MedSAM's authors' own inference does (skimage resize, min-max,
box scaled to the stretched frame, probabilities resized back)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from baps_fed.fm import spec
from baps_fed.fm.errors import FMInputError
from baps_fed.fm.preprocess import resize_spline
from baps_fed.fm.sam_batched import BatchedSam
from baps_fed.fm.torch_fm import TorchSamFM

skimage_transform = pytest.importorskip(
    "skimage.transform", reason="the authors' reference preprocessing needs scikit-image"
)


def _images(rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """Images smaller and larger than the model's input, square and not, with a bright blob."""
    out = []
    for h, w in [(48, 80), (64, 64), (150, 90)]:
        yy, xx = np.mgrid[:h, :w]
        cy, cx, r = 0.5 * h, 0.45 * w, 0.2 * min(h, w)
        img = rng.integers(20, 90, (h, w, 3)).astype(np.float64)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] += 140
        box = np.array([cx - r - 2, cy - r - 3, cx + r + 1, cy + r + 2], np.float32)
        out.append((img.clip(0, 255).astype(np.uint8), box))
    return out


def test_spline_resize_is_skimages():
    rng = np.random.default_rng(0)
    for h, w, oh, ow in [(300, 400, 256, 256), (40, 50, 64, 64), (600, 200, 64, 96)]:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ref = skimage_transform.resize(
            image, (oh, ow), order=3, preserve_range=True, anti_aliasing=True
        )
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
        ours = resize_spline(x, (oh, ow))[0].permute(1, 2, 0).numpy()
        assert np.abs(ours - ref).max() < 1e-3  # float32 against float64
        assert (np.floor(ours) != ref.astype(np.uint8)).mean() < 1e-3  # the uint8 cast


def test_batched_medsam_matches_the_authors_one_image_inference(small_sam):
    from tests.fm.authors_medsam import authors_medsam_mask

    fm = TorchSamFM(BatchedSam(small_sam, preprocess="medsam"), "medsam", prompt_kinds={"box"})
    for image, box in _images(np.random.default_rng(1)):
        theirs = authors_medsam_mask(small_sam, image, box)
        ours = fm.segment(image[None], boxes=box[None])[0] > 0
        assert theirs.any() and (~theirs.astype(bool)).any()  # a mask, not a blank
        assert (ours != theirs.astype(bool)).mean() < 2e-3


def test_medsam_spec_uses_medsam_preprocessing_and_boxes_only(monkeypatch, small_sam):
    monkeypatch.setattr(spec, "load_sam_checkpoint", lambda path, arch: small_sam)
    fm = spec.load_fm("medsam:/models/medsam_vit_b.pth")
    assert fm.model.preprocess == "medsam" and fm.prompt_kinds == {"box"}
    image, box = _images(np.random.default_rng(2))[1]
    with pytest.raises(FMInputError, match="does not accept point prompts.*send boxes"):
        fm.segment(image[None], points=np.array([[[30.0, 30.0]]], np.float32))
    assert fm.meter.images == 0  # refused before any query
    assert fm.segment(image[None], boxes=box[None]).shape == (1, 64, 64)
