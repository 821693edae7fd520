"""A whole single-site run on real files: checkpoints, exact resume, budget, report."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from baps_fed.data.sample import Sample, SegmentationDataset
from baps_fed.decoder import DecoderConfig, IPDecoder
from baps_fed.fm.sam_batched import BatchedSam
from baps_fed.fm.torch_fm import TorchSamFM
from baps_fed.image_encoder import SmallImageEncoder
from baps_fed.single_site import run_training
from baps_fed.train import StepConfig, TrainConfig, decoder_theta, train_site
from baps_fed.zoo import SpsaConfig


def _data(n=12) -> SegmentationDataset:
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        mask = np.zeros((64, 64), bool)
        y, x = rng.integers(10, 40, 2)
        mask[y : y + 16, x : x + 20] = True
        image = rng.integers(0, 80, (64, 64, 3), dtype=np.uint8)
        image[mask] += 60
        samples.append(Sample(image, mask, f"case-{i:02d}"))
    return SegmentationDataset("toy", samples)


def _decoder():
    torch.manual_seed(0)
    return IPDecoder(DecoderConfig(image_size=64), SmallImageEncoder().eval(), "test")


CFG = TrainConfig(
    steps=6,
    val_every=3,
    step=StepConfig(
        batch_size=2, spsa=SpsaConfig(sp_avg=2, update="sign", lr=0.05, schedule="constant")
    ),
)


def test_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path, small_sam):
    data = _data()
    fm = TorchSamFM(BatchedSam(small_sam), "small")
    train_site(_decoder(), fm, data[:8], data[8:], CFG, tmp_path / "a", progress=False)
    half = TrainConfig(**{**CFG.__dict__, "steps": 3})
    train_site(_decoder(), fm, data[:8], data[8:], half, tmp_path / "b", progress=False)
    res = train_site(
        _decoder(), fm, data[:8], data[8:], CFG, tmp_path / "b", resume=True, progress=False
    )
    assert [r["step"] for r in res.history if "loss" in r] == list(range(1, 7))
    np.testing.assert_array_equal(
        decoder_theta(tmp_path / "a" / "checkpoints" / "last.pt"),
        decoder_theta(tmp_path / "b" / "checkpoints" / "last.pt"),
    )


def test_budget_ends_cleanly_and_keeps_the_best_checkpoint(tmp_path, small_sam):
    data = _data()
    fm = TorchSamFM(BatchedSam(small_sam), "small", budget_images=4 + 3 * 8)  # val + 3 steps
    res = train_site(_decoder(), fm, data[:8], data[8:], CFG, tmp_path, progress=False)
    assert res.stopped.startswith("query budget reached")
    assert (tmp_path / "checkpoints" / "best.pt").is_file()
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
    assert fm.meter.images <= fm.budget_images


@pytest.mark.parametrize("preset", ["vp", "basis"])
def test_run_folder_has_config_metrics_report_and_plots(tmp_path, small_sam, preset):
    dec = IPDecoder(DecoderConfig(image_size=64, preset=preset), SmallImageEncoder(), "test")
    fm = TorchSamFM(BatchedSam(small_sam), "small")
    _, summary = run_training(dec, fm, _data(20), CFG, tmp_path, progress=False)
    for name in (
        "config.json",
        "metrics.csv",
        "metrics.json",
        "report.md",
        "dice_over_queries.png",
        "examples.png",
        "checkpoints/best.pt",
    ):
        assert (tmp_path / name).is_file(), name
    assert summary["fm_images_train"] == 6 * 2 * 2 * 2
    assert "zero-shot" in (tmp_path / "report.md").read_text()
