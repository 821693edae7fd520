"""A query the FM cannot answer is the caller's fault and says so: in process an FMInputError,
over the service INVALID_ARGUMENT with the same message (not INTERNAL)."""

from __future__ import annotations

import numpy as np
import pytest

from baps_fed.fm.errors import FMInputError
from baps_fed.fm.sam_batched import BatchedSam
from baps_fed.fm.torch_fm import TorchSamFM
from tests.fm.test_service import _client, serving

THIN = np.zeros((1, 1000, 3, 3), np.uint8)  # 3 px wide, 1000 px high
POINT = np.array([[[1.0, 500.0]]], np.float32)


def test_an_image_whose_short_side_vanishes_is_refused_in_process(small_sam):
    fm = TorchSamFM(BatchedSam(small_sam), "small")
    with pytest.raises(FMInputError, match="3x1000 image scales to 0x64.*pad or crop"):
        fm.segment(THIN, POINT)
    assert fm.meter.images == 0


def test_the_service_answers_invalid_argument_with_the_reason(small_sam):
    with serving(TorchSamFM(BatchedSam(small_sam), "small")) as server, _client(server) as client:
        with pytest.raises(FMInputError, match="INVALID_ARGUMENT|short side vanishes") as err:
            client.segment(THIN, POINT)
        assert "short side vanishes" in str(err.value)
