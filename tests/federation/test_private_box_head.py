"""A site's private box head: its clinicians' drawing habit, learnt at home, never sent."""

from __future__ import annotations

import numpy as np
import pytest

from baps_fed.data.modalities import synthetic_dataset
from baps_fed.data.prompts import Prompts
from baps_fed.federation.contract import FedTrainConfig, SiteSpec
from baps_fed.federation.local_site import LocalSite
from baps_fed.fm.contract import Query
from baps_fed.fm.sam_batched import BatchedSam
from baps_fed.fm.torch_fm import TorchSamFM
from baps_fed.method.ip_decoder import DecoderConfig, build_decoder
from baps_fed.method.private_head import WithPrivateHead

BOXES = Prompts(boxes=np.array([[10, 10, 60, 60], [20, 30, 100, 90]], np.float32))


class RecordingFM(TorchSamFM):
    """Keeps the boxes of every query it answers."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.boxes: list[np.ndarray] = []

    def _segment(self, query: Query) -> np.ndarray:
        self.boxes.append(query.boxes.copy())
        return super()._segment(query)


def _site(small_sam, **cfg) -> tuple[LocalSite, RecordingFM]:
    cfg = FedTrainConfig(local_steps=2, batch_size=2, sp_avg=1, prompt="box", **cfg)
    fm = RecordingFM(BatchedSam(small_sam), "small")
    data = synthetic_dataset("fundus", 12)
    return LocalSite(SiteSpec("a", "fundus"), cfg, fm=fm, data=data), fm


def test_the_box_head_moves_the_boxes_and_leaves_the_pixels_to_the_shared_decoder():
    shared = build_decoder(DecoderConfig(image_size=128))
    model = WithPrivateHead(shared, "box")
    assert model.num_params == shared.num_params + 4
    inputs = model.encode(np.zeros((2, 128, 128, 3), np.uint8), BOXES)
    theta = model.get_theta()
    theta[-4:] = [0.1, 0.0, 0.0, 0.2]  # x0 in by 10 % of the width, y1 in by 20 % of the height
    sent = model.refine(np.stack([theta, model.get_theta()]), inputs, BOXES, (128, 128))
    np.testing.assert_allclose(sent.boxes[:2], [[15, 10, 60, 50], [28, 30, 100, 78]])
    np.testing.assert_array_equal(sent.boxes[2:], BOXES.boxes)  # zero head: the drawn box
    np.testing.assert_array_equal(
        model.prompts(theta, inputs), shared.prompts(theta[: shared.num_params], inputs)
    )


def test_a_site_trains_its_box_habit_at_home_and_uploads_the_shared_part_only(small_sam):
    site, fm = _site(small_sam, private_head="box")
    theta = np.zeros(site.decoder.num_params, np.float32)
    r = site.train_round(theta, 1, None)
    assert r.update.shape == theta.shape
    assert r.private.shape == (4,) and np.abs(r.private).max() > 0  # sign updates always move
    # the FM saw boxes moved by the head's perturbations, not only the drawn ones
    assert len({tuple(b) for q in fm.boxes for b in q}) > len({tuple(b) for b in fm.boxes[0]})

    fm.boxes.clear()
    site.evaluate(theta + r.update, np.full(4, 0.1, np.float32))
    drawn, moved = fm.boxes[0], fm.boxes[1]  # zero-shot first, then the site's own prompting
    assert (moved[:, 2] - moved[:, 0] < drawn[:, 2] - drawn[:, 0]).all()  # every box narrower


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"private_head": "box"}, "set prompt to box"),
        ({"private_head": "boxes", "prompt": "box"}, "private-head must be one of"),
    ],
)
def test_a_private_head_the_run_cannot_use_is_refused_with_what_to_set(cfg, message):
    with pytest.raises(ValueError, match=message):
        FedTrainConfig(**cfg)
