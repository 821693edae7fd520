"""The shipped default FM: loads with nothing downloaded, good at home, worse on medical data."""

from __future__ import annotations

import numpy as np
import pytest

from baps_fed.data.general import general_dataset
from baps_fed.data.modalities import MODALITIES, synthetic_dataset
from baps_fed.evaluation.evaluate import evaluate_fm
from baps_fed.fm.spec import load_fm
from baps_fed.fm.tiny import default_weights_path, load_tiny_sam


@pytest.fixture(scope="module")
def tiny():
    return load_fm("tiny")


def test_weights_are_small_and_say_how_they_were_made():
    path = default_weights_path()
    assert path.stat().st_size < 20e6
    _, meta = load_tiny_sam(path)
    assert meta["command"].startswith("python simulations/pretrain_tiny_fm.py")
    assert meta["holdout_dice"] >= 0.85  # the goal for the shipped FM (issue 2)


@pytest.fixture(scope="module")
def home_dice(tiny):
    return evaluate_fm(tiny, general_dataset(96, seed0=30_000_000), prompt_seed=3).dice.mean()


def test_home_domain_is_segmented_well(home_dice):
    assert home_dice >= 0.72


@pytest.mark.parametrize("modality", MODALITIES)
def test_medical_modalities_leave_headroom(tiny, home_dice, modality):
    dice = evaluate_fm(tiny, synthetic_dataset(modality, 48, seed=5), prompt_seed=5).dice.mean()
    assert 0.3 < dice < home_dice - 0.15  # clearly worse than at home, far from hopeless


def test_same_query_same_logits(tiny):
    ds = synthetic_dataset("fundus", 4)
    images = np.stack([s.image for s in ds])
    points = np.full((4, 1, 2), 64.0)
    np.testing.assert_array_equal(tiny.segment(images, points), tiny.segment(images, points))
