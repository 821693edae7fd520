"""Box refinement: a few parameters that move each side of the box the FM receives."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from baps_fed.data.boxes import BoxConfig
from baps_fed.data.prompts import PromptConfig, Prompts
from baps_fed.fm.contract import BlackboxFM
from baps_fed.fm.sam_batched import BatchedSam
from baps_fed.fm.torch_fm import TorchSamFM
from baps_fed.method.box_refiner import refine_boxes
from baps_fed.method.image_encoder import SmallImageEncoder
from baps_fed.method.ip_decoder import (
    DecoderConfig,
    IPDecoder,
    build_decoder,
    load_decoder,
    save_decoder,
)
from baps_fed.method.perturbations import SeedKey
from baps_fed.method.spsa import SpsaConfig, SpsaState
from baps_fed.method.spsa_step import BOX_C, StepConfig, calibrate_c, prompt_fn, spsa_step

BOXES = np.array([[20, 30, 60, 90], [0, 0, 64, 64]], np.float32)


def _decoder(adapt: str, size: int = 64, refiner: str = "bias") -> IPDecoder:
    torch.manual_seed(0)
    cfg = DecoderConfig(image_size=size, adapt=adapt, box_refiner=refiner)  # type: ignore[arg-type]
    return IPDecoder(cfg, SmallImageEncoder().eval(), "test")


def test_sides_move_inwards_by_a_fraction_of_the_box_and_stay_valid():
    feats = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # bias only
    coef = torch.zeros(1, 4, 2)
    coef[0, :, 0] = torch.tensor([0.1, 0.2, 0.1, -0.5])  # y1 moves outwards by half the height
    out = refine_boxes(coef, feats, BOXES, (64, 64))[0]
    np.testing.assert_allclose(out[0], [24, 42, 56, 64])  # y1 90 + 30 clipped to the image
    np.testing.assert_allclose(out[1], [6.4, 12.8, 57.6, 64])
    collapse = torch.zeros(1, 4, 2)
    collapse[0, :, 0] = 0.9  # every side past the middle: still one pixel wide, inside
    x0, y0, x1, y1 = refine_boxes(collapse, feats, BOXES, (64, 64))[0, 0]
    assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64


@pytest.mark.parametrize(
    ("adapt", "visual", "box"), [("prompt", 72, 0), ("box", 0, 4), ("both", 72, 4)]
)
def test_what_theta_holds_per_adapt_kind(adapt, visual, box):
    dec = _decoder(adapt)
    assert dec.num_params == visual + box and dec.n_visual == visual
    assert not dec.get_theta().any()  # zero: step 0 is the zero-shot FM with the drawn box
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    drawn = np.array([[20, 30, 60, 63], [0, 0, 64, 64]], np.float32)
    inputs = dec.encode(images, Prompts(boxes=drawn))
    sent = dec.refine(np.zeros((3, dec.num_params)), inputs, Prompts(boxes=drawn), (64, 64))
    np.testing.assert_array_equal(sent.boxes, np.tile(drawn, (3, 1)))
    if adapt == "box":
        theta = np.ones(dec.num_params, np.float32) * 0.05
        assert not dec.prompts(theta, inputs).any()  # the pixels are left alone


def test_a_bias_refiner_moves_every_images_box_the_same_way(tmp_path):
    dec = build_decoder(DecoderConfig(image_size=64, adapt="box", box_refiner="bias"))
    assert dec.num_params == 4  # one move per side
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    drawn = np.array([[10, 10, 50, 50], [20, 0, 40, 60]], np.float32)
    inputs = dec.encode(images, Prompts(boxes=drawn))
    theta = np.array([0.1, 0.1, 0.1, 0.1], np.float32)  # each side inwards by 10 % of the size
    sent = dec.refine(theta[None], inputs, Prompts(boxes=drawn), (64, 64)).boxes
    np.testing.assert_allclose(sent, [[14, 14, 46, 46], [22, 6, 38, 54]], rtol=1e-6)
    dec.set_theta(theta)
    save_decoder(tmp_path / "d.pt", dec)
    back, _ = load_decoder(tmp_path / "d.pt")
    assert back.cfg.box_refiner == "bias"
    np.testing.assert_array_equal(back.get_theta(), theta)
    with pytest.raises(ValueError, match="box_refiner must be image or bias"):
        build_decoder(DecoderConfig(adapt="box", box_refiner="learned"))  # type: ignore[arg-type]


def test_a_refining_decoder_reloads_exactly(tmp_path):
    dec = build_decoder(DecoderConfig(image_size=64, adapt="both"))
    theta = np.random.default_rng(1).standard_normal(dec.num_params).astype(np.float32) * 0.05
    dec.set_theta(theta)
    save_decoder(tmp_path / "d.pt", dec)
    back, _ = load_decoder(tmp_path / "d.pt")
    assert back.cfg.adapt == "both"
    np.testing.assert_array_equal(back.get_theta(), theta)


class Recording(BlackboxFM):
    prompt_kinds = frozenset({"box"})

    def __init__(self, inner: BlackboxFM) -> None:
        super().__init__()
        self.inner, self.boxes = inner, []

    def _segment(self, q):
        self.boxes.append(q.boxes)
        return self.inner.segment(q.images, boxes=q.boxes)


def test_spsa_perturbs_the_boxes_and_evaluation_sends_the_refined_box(small_sam):
    dec = _decoder("box")
    assert calibrate_c(dec, 3.0) == BOX_C
    fm = Recording(TorchSamFM(BatchedSam(small_sam), "small"))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    masks = np.zeros((4, 64, 64), bool)
    masks[:, 20:40, 15:45] = True
    cfg = StepConfig(
        batch_size=2,
        spsa=SpsaConfig(c=BOX_C, update="sign", lr=0.05),
        prompt=PromptConfig(kind="box", box=BoxConfig(protocol="tight")),
    )
    res = spsa_step(dec, fm, images, masks, dec.get_theta(), SpsaState(), cfg, SeedKey(0, 0, 0))
    k = cfg.spsa.sp_avg
    sent = fm.boxes[0].reshape(2 * k, 2, 4)
    assert not np.allclose(sent[0], sent[k])  # +c and -c moved the sides differently
    assert np.abs(res.theta).max() > 0
    drawn = Prompts(boxes=np.array([[10, 10, 50, 50]] * 4, np.float32))
    _, refined = prompt_fn(dec, res.theta)(images, drawn)
    assert not np.array_equal(refined.boxes, drawn.boxes)
    steady = replace(cfg, prompt=PromptConfig(kind="box"))
    assert steady.prompt.box.protocol == "loose"
