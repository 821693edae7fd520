"""The shipped default FM: loads with nothing downloaded, good at home, worse on medical data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from baps_fed.data.boxes import BoxConfig
from baps_fed.data.general import general_dataset
from baps_fed.data.modalities import MODALITIES, synthetic_dataset
from baps_fed.data.prompts import PromptConfig
from baps_fed.evaluation.evaluate import evaluate_fm
from baps_fed.fm.sam_batched import BatchedSam
from baps_fed.fm.spec import load_fm
from baps_fed.fm.tiny import default_weights_path, load_tiny_sam

# tight-box Dice on these 96 scenes: 0.784 after the box stage, 0.424 before it (random init)
BOX_HOME_DICE = 0.70


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
def home():
    """96 scenes of the FM's home domain (drawn once: the point and box checks share them)."""
    return general_dataset(96, seed0=30_000_000)


@pytest.fixture(scope="module")
def home_dice(tiny, home):
    return evaluate_fm(tiny, home, prompt_seed=3).dice.mean()


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


def test_box_answers_are_good_at_home(tiny, home):
    """The box stage (simulations/results/pretrain_tiny_fm_boxes.log) taught the two box-corner
    embeddings to the frozen FM: boxes drawn from the mask segment the home domain well."""
    tight = PromptConfig(kind="box", box=BoxConfig(protocol="tight"))
    assert evaluate_fm(tiny, home, prompt_seed=3, prompting=tight).dice.mean() >= BOX_HOME_DICE


def test_point_answers_never_read_the_box_embeddings():
    """A point-only query reads point_embeddings[0], [1] and not_a_point_embed, never the two
    box-corner embeddings [2] and [3]: training those leaves every point answer bit-identical."""
    sam, _ = load_tiny_sam()
    model = BatchedSam(sam).eval()
    ds = general_dataset(8, seed0=30_000_000)
    x = torch.from_numpy(np.stack([s.image for s in ds])).permute(0, 3, 1, 2).float()
    rng = np.random.default_rng(0)
    points = torch.from_numpy(rng.uniform(0, 128, (8, 3, 2)).astype(np.float32))
    labels = torch.tensor([[1, 0, 1]] * 8)
    boxes = torch.tensor([[20.0, 30.0, 90.0, 100.0]] * 8)
    with torch.inference_mode():
        before = model(x, points, labels), model(x, points[:, :1], labels[:, :1])
        box_before = model(x, boxes=boxes)
        for i in (2, 3):
            sam.prompt_encoder.point_embeddings[i].weight.normal_(
                generator=torch.Generator().manual_seed(i)
            )
        after = model(x, points, labels), model(x, points[:, :1], labels[:, :1])
        box_after = model(x, boxes=boxes)
    assert all(torch.equal(b, a) for b, a in zip(before, after, strict=True))
    assert not torch.equal(box_before, box_after)  # boxes do read them
