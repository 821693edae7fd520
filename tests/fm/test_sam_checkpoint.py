"""Loading segment-anything-format checkpoints that the test writes itself."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from baps_fed.fm.sam_batched import BatchedSam
from baps_fed.fm.sam_checkpoint import CheckpointError, load_sam_checkpoint
from baps_fed.fm.spec import load_fm
from baps_fed.fm.torch_fm import TorchSamFM
from tests.conftest import SMALL_ARCH


def _outputs(sam):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    points = rng.uniform(0, 64, (2, 1, 2))
    return TorchSamFM(BatchedSam(sam), "x").segment(images, points)


def test_plain_state_dict_round_trip(tmp_path, small_sam):
    path = tmp_path / "sam_small.pth"
    torch.save(small_sam.state_dict(), path)
    loaded = load_sam_checkpoint(path, SMALL_ARCH)
    np.testing.assert_array_equal(_outputs(loaded), _outputs(small_sam))


def test_medsam_style_wrapped_and_dataparallel_prefixes(tmp_path, small_sam):
    path = tmp_path / "medsam_snapshot.pth"
    state = {f"module.{k}": v for k, v in small_sam.state_dict().items()}
    torch.save({"model": state, "epoch": 3}, path)
    loaded = load_sam_checkpoint(path, SMALL_ARCH)
    np.testing.assert_array_equal(_outputs(loaded), _outputs(small_sam))


def test_mismatched_architecture_names_what_the_file_looks_like(tmp_path, small_sam):
    path = tmp_path / "sam_small.pth"
    torch.save(small_sam.state_dict(), path)
    wider = dataclasses.replace(SMALL_ARCH, embed_dim=48)
    with pytest.raises(CheckpointError, match=r"does not match.*width 32.*shape mismatches"):
        load_sam_checkpoint(path, wider)


def test_spec_with_published_arch_rejects_a_small_checkpoint(tmp_path, small_sam):
    path = tmp_path / "sam_small.pth"
    torch.save(small_sam.state_dict(), path)
    with pytest.raises(CheckpointError, match="does not match vit_b"):
        load_fm(f"sam:vit_b:{path}")


def test_tiny_spec_with_a_foreign_file_says_what_to_use(tmp_path, small_sam):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": small_sam.state_dict()}, foreign)  # readable, but not tiny format
    with pytest.raises(CheckpointError, match="not in the tiny FM format") as err:
        load_fm(f"tiny:{foreign}")
    for hint in (str(foreign), "pretrain_tiny_fm.py", "sam:ARCH:PATH"):
        assert hint in str(err.value)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read") as err:
        load_fm(f"tiny:{garbage}")
    assert str(garbage) in str(err.value) and "sam:ARCH:PATH" in str(err.value)
    with pytest.raises(FileNotFoundError):
        load_fm(f"tiny:{tmp_path / 'missing.pt'}")


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_sam_checkpoint(tmp_path / "nope.pth", "vit_b")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_sam_checkpoint(bad, SMALL_ARCH)
    with pytest.raises(CheckpointError, match="unknown SAM architecture"):
        load_sam_checkpoint(bad, "vit_x")
