"""The white-box oracle trains every kind of decoder through the FM, with points and boxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from baps_fed.data.boxes import BoxConfig
from baps_fed.data.modalities import synthetic_dataset
from baps_fed.data.prompts import POINT, PromptConfig
from baps_fed.fm.sam_batched import BatchedSam
from baps_fed.method.image_encoder import SmallImageEncoder
from baps_fed.method.ip_decoder import DecoderConfig, IPDecoder
from baps_fed.method.oracle import train_oracle

LOOSE = PromptConfig(kind="box", box=BoxConfig(protocol="loose"))


def _decoder(adapt: str) -> IPDecoder:
    torch.manual_seed(0)
    cfg = DecoderConfig(image_size=64, adapt=adapt)  # type: ignore[arg-type]
    return IPDecoder(cfg, SmallImageEncoder().eval(), "test")


def _data():
    return synthetic_dataset("fundus", 12, size=64)


@pytest.mark.parametrize(
    ("adapt", "preprocess", "prompt"),
    [
        ("prompt", "sam", POINT),
        ("prompt", "sam", LOOSE),
        ("box", "sam", LOOSE),
        ("both", "litemedsam", LOOSE),  # boxes truncated to integers: straight through
    ],
)
def test_every_part_of_theta_learns_through_the_fm(small_sam, adapt, preprocess, prompt):
    decoder = _decoder(adapt)
    model = BatchedSam(small_sam, preprocess=preprocess)
    theta = train_oracle(decoder, model, _data(), steps=3, batch_size=4, prompt=prompt)
    assert theta.shape == (decoder.num_params,) and np.isfinite(theta).all()
    visual, refiner = theta[: decoder.n_visual], theta[decoder.n_visual :]
    assert np.abs(visual).max() > 0 if decoder.n_visual else visual.size == 0
    assert np.abs(refiner).max() > 0 if decoder.refines_boxes else refiner.size == 0
