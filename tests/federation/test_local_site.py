"""A site's local rounds: where a round starts (personal_keep) and what it returns."""

from __future__ import annotations

import numpy as np
import pytest

from baps_fed.data.modalities import synthetic_dataset
from baps_fed.federation.contract import FedTrainConfig, SiteSpec, initial_theta
from baps_fed.federation.local_site import LocalSite
from baps_fed.fm.sam_batched import BatchedSam
from baps_fed.fm.torch_fm import TorchSamFM


def _site(small_sam, keep: float) -> LocalSite:
    cfg = FedTrainConfig(local_steps=2, batch_size=2, sp_avg=1, personal_keep=keep)
    fm = TorchSamFM(BatchedSam(small_sam), "small")
    return LocalSite(SiteSpec("a", "fundus"), cfg, fm=fm, data=synthetic_dataset("fundus", 12))


def _two_points(dim: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    return (rng.normal(0, 0.1, dim).astype(np.float32), rng.normal(0, 0.1, dim).astype(np.float32))


@pytest.mark.parametrize("keep", [0.0, 0.25, 1.0])
def test_a_round_starts_between_the_global_and_the_own_decoder(small_sam, keep):
    site = _site(small_sam, keep)
    glob, own = _two_points(site.decoder.num_params)
    np.testing.assert_allclose(site.start_point(glob, own), (1 - keep) * glob + keep * own)
    np.testing.assert_array_equal(site.start_point(glob, None), glob)  # first round: global


def test_the_update_is_the_progress_from_the_start_point(small_sam):
    site = _site(small_sam, 0.5)
    glob, own = _two_points(site.decoder.num_params)
    r = site.train_round(glob, 1, None, None, own)
    start = site.start_point(glob, own)
    np.testing.assert_allclose(r.personal, start + r.update, atol=1e-6)
    assert np.abs(r.update).max() > 0  # sign updates always move


def test_keep_zero_is_plain_fedavg_whatever_the_own_decoder(small_sam):
    site = _site(small_sam, 0.0)
    glob, own = _two_points(site.decoder.num_params)
    with_own = site.train_round(glob, 1, None, None, own)
    without = site.train_round(glob, 1, None, None, None)
    np.testing.assert_array_equal(with_own.update, without.update)


def test_keep_one_ignores_the_global_decoder(small_sam):
    site = _site(small_sam, 1.0)
    glob, own = _two_points(site.decoder.num_params)
    a = site.train_round(glob, 1, None, None, own)
    b = site.train_round(np.zeros_like(glob), 1, None, None, own)
    np.testing.assert_array_equal(a.personal, b.personal)


def test_a_global_decoder_of_another_size_is_refused(small_sam):
    site = _site(small_sam, 0.0)
    with pytest.raises(ValueError, match="disagree on the decoder preset"):
        site.train_round(np.zeros(5, np.float32), 1, None)
    assert initial_theta(site.cfg).size == site.decoder.num_params


def test_a_run_image_size_its_cases_do_not_have_is_refused_naming_the_site(small_sam):
    fm = TorchSamFM(BatchedSam(small_sam), "small")
    cfg = FedTrainConfig(local_steps=1, image_size=256)  # synthetic cases are 128 px
    with pytest.raises(ValueError, match=r"site 'a': its cases are 128 x 128 px, the run's "):
        LocalSite(SiteSpec("a", "fundus", n=8), cfg, fm=fm)
    site = LocalSite(SiteSpec("a", "fundus", n=8), FedTrainConfig(local_steps=1), fm=fm)
    assert site.decoder.cfg.image_size == 128 == site.images.shape[1]
