from __future__ import annotations

import pytest

from baps_fed.fm.tiny import save_tiny_weights
from tests.conftest import SMALL_ARCH


@pytest.fixture
def fm_spec(tmp_path, small_sam) -> str:
    """A small SAM-architecture FM on disk, as a spec every process can load."""
    weights = tmp_path / "fm.pt"
    save_tiny_weights(weights, small_sam, SMALL_ARCH, {})
    return f"tiny:{weights}"
