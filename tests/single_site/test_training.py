"""A whole single-site run on real files: checkpoints, exact resume, budget, report."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from baps_fed.data.sample import Sample, SegmentationDataset
from baps_fed.fm.sam_batched import BatchedSam
from baps_fed.fm.torch_fm import TorchSamFM
from baps_fed.method.image_encoder import SmallImageEncoder
from baps_fed.method.ip_decoder import DecoderConfig, IPDecoder
from baps_fed.method.spsa import SpsaConfig
from baps_fed.method.spsa_step import StepConfig
from baps_fed.single_site.run import run_training
from baps_fed.single_site.training import TrainConfig, decoder_theta, train_site


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


def test_resume_keeps_query_counts_and_history_continuous(tmp_path, small_sam):
    data = _data()
    fm = TorchSamFM(BatchedSam(small_sam), "small")
    half = TrainConfig(**{**CFG.__dict__, "steps": 3})
    train_site(_decoder(), fm, data[:8], data[8:], half, tmp_path, progress=False)
    res = train_site(_decoder(), fm, data[:8], data[8:], CFG, tmp_path, resume=True, progress=False)
    images = [r["fm_images"] for r in res.history]
    assert images == sorted(images) and res.fm_images_train == 6 * 8
    assert res.config.step.spsa.c == half_c(tmp_path)  # the calibrated c came back too


def half_c(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["extra"][
        "train_config"
    ]["step"]["spsa"]["c"]


def test_resume_refuses_other_data(tmp_path, small_sam):
    data = _data()
    fm = TorchSamFM(BatchedSam(small_sam), "small")
    train_site(_decoder(), fm, data[:8], data[8:], CFG, tmp_path, progress=False)
    with pytest.raises(ValueError, match="other data"):
        train_site(_decoder(), fm, data[1:9], data[9:], CFG, tmp_path, resume=True, progress=False)


def test_checkpoint_of_a_run_reloads_with_load_decoder(tmp_path, small_sam, monkeypatch):
    dec = _decoder()
    fm = TorchSamFM(BatchedSam(small_sam), "small")
    res = train_site(dec, fm, _data()[:8], _data()[8:], CFG, tmp_path, progress=False)
    monkeypatch.setattr(
        "baps_fed.method.ip_decoder.load_image_encoder", lambda _p=None: (dec.encoder, "test")
    )
    from baps_fed.method.ip_decoder import load_decoder

    loaded, extra = load_decoder(tmp_path / "checkpoints" / "best.pt")
    np.testing.assert_array_equal(loaded.get_theta(), res.theta)
    assert extra["best_val_dice"] == res.best_val_dice


def test_budget_run_still_writes_its_report(tmp_path, small_sam):
    fm = TorchSamFM(BatchedSam(small_sam), "small", budget_images=4 + 2 * 8)
    dec = IPDecoder(DecoderConfig(image_size=64), SmallImageEncoder(), "test")
    _, summary = run_training(dec, fm, _data(20), CFG, tmp_path, progress=False)
    assert summary["stopped"].startswith("query budget reached")
    assert summary["fm_images_test"] > 0 and (tmp_path / "report.md").is_file()
    assert fm.budget_images == 20  # restored after the test comparison


def test_report_says_what_the_embedding_cache_saved(tmp_path, small_sam):
    """The test comparison scores the same test images again for the examples figure: those
    images are answered from the cache, and the run's files say so."""
    fm = TorchSamFM(BatchedSam(small_sam), "small", cache_bytes=64 * 2**20)
    dec = IPDecoder(DecoderConfig(image_size=64), SmallImageEncoder(), "test")
    _, summary = run_training(dec, fm, _data(20), CFG, tmp_path, progress=False)
    usage = summary["fm"]
    assert (
        usage["cache_hits"] > 0 and usage["cache_hits"] + usage["cache_misses"] == usage["images"]
    )
    assert 0 < usage["cache_peak_bytes"] <= usage["cache_max_bytes"]
    assert "answered without encoding" in (tmp_path / "report.md").read_text()


def test_permanent_fm_errors_propagate_and_an_outage_ends_the_run(tmp_path, small_sam):
    from baps_fed.fm.contract import BlackboxFM
    from baps_fed.fm.errors import FMInputError

    inner = TorchSamFM(BatchedSam(small_sam), "small")

    class FailingTrainingCalls(BlackboxFM):
        """Answers validation (4 images) but fails every training call (8 images)."""

        def __init__(self, error):
            super().__init__()
            self.error, self.name = error, "failing"

        def _segment(self, q):
            if len(q.images) == 8:
                raise self.error
            return inner.segment(q.images, q.points, q.labels, q.boxes)

    data = _data()
    with pytest.raises(FMInputError):
        train_site(
            _decoder(),
            FailingTrainingCalls(FMInputError("bad query")),
            data[:8],
            data[8:],
            CFG,
            tmp_path / "a",
            progress=False,
        )
    cfg = TrainConfig(**{**CFG.__dict__, "max_failed_steps": 3})
    fm = FailingTrainingCalls(ConnectionError("service down"))
    res = train_site(_decoder(), fm, data[:8], data[8:], cfg, tmp_path / "b", progress=False)
    assert "failed 3 steps in a row" in res.stopped and "service down" in res.stopped
    np.testing.assert_array_equal(res.theta, _decoder().get_theta())  # nothing applied
