"""Seed-and-scalar uploads: the coordinator's replay rebuilds a site's update bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from baps_fed.aggregate import ServerOptConfig, ServerOptimizer
from baps_fed.codec import CodecError, SiteReplica, pack_scalars, unpack_scalars
from baps_fed.data.modalities import synthetic_dataset
from baps_fed.fm.sam_batched import BatchedSam
from baps_fed.fm.torch_fm import TorchSamFM
from baps_fed.site_training import FedTrainConfig, LocalSite, SiteSpec, initial_theta
from coordinator.strategy import SiteUpload, UpdateAveraging


def test_scalars_round_trip_and_bad_uploads_are_named():
    s = np.random.default_rng(0).normal(size=(8, 5)).astype(np.float32)
    blob = pack_scalars(0.125, s)
    c, back = unpack_scalars(blob)
    assert c == 0.125 and np.array_equal(back, s)
    assert len(blob) == 20 + 8 * 5 * 4  # header, then float32 scalars
    with pytest.raises(CodecError, match="shorter than"):
        unpack_scalars(blob[:10])
    with pytest.raises(CodecError, match="magic"):
        unpack_scalars(b"XXXX" + blob[4:])
    with pytest.raises(CodecError, match="header says"):
        unpack_scalars(blob[:-4])


@pytest.mark.parametrize(
    "settings",
    [
        {"private_head": "basis", "personal_keep": 0.5},
        {"private_head": "none", "dp": True, "dp_sample_rate": 0.5},
    ],
    ids=["private-head-and-own-decoder", "dp"],
)
def test_replaying_uploads_rebuilds_every_round_exactly(small_sam, settings):
    cfg = FedTrainConfig(local_steps=3, batch_size=2, sp_avg=2, **settings)
    fm = TorchSamFM(BatchedSam(small_sam), "small")
    site = LocalSite(SiteSpec("a", "fundus"), cfg, fm=fm, data=synthetic_dataset("fundus", 12))
    replica = SiteReplica("a", n_private=site.model.num_params - site.decoder.num_params)
    theta, state, private, personal, spent = initial_theta(cfg), None, None, None, None
    for rnd in (1, 2):
        r = site.train_round(theta, rnd, state, private, personal, spent)
        blob = pack_scalars(r.c, r.scalars)
        rebuilt = replica.replay_round(theta, rnd, blob, cfg)
        np.testing.assert_array_equal(rebuilt, r.update)
        np.testing.assert_array_equal(replica.private, r.private)
        state, private, personal, spent = r.state, r.private, r.personal, r.privacy
        theta = theta + 0.5 * r.update  # any global the coordinator might send next


def test_an_upload_of_the_wrong_size_is_refused():
    cfg = FedTrainConfig(local_steps=3, sp_avg=2)
    replica = SiteReplica("a", n_private=0)
    with pytest.raises(CodecError, match="the run expects 3 x 2"):
        replica.replay_round(initial_theta(cfg), 1, pack_scalars(1.0, np.zeros((2, 2))), cfg)


def _upload(name: str, scalars: np.ndarray) -> SiteUpload:
    blob = np.frombuffer(pack_scalars(0.1, scalars), np.uint8)
    return SiteUpload(name, {"scalars": blob}, {"num-examples": 10.0, "spsa-step": 0.0})


def test_the_coordinator_rejects_a_site_whose_scalars_are_all_nan_and_says_which():
    cfg = FedTrainConfig(local_steps=3, sp_avg=2, private_head="none")
    honest = np.random.default_rng(1).normal(size=(3, 2)).astype(np.float32)
    coordinator = UpdateAveraging(ServerOptimizer(ServerOptConfig()), initial_theta(cfg), cfg)
    assert coordinator.apply_round(1, [_upload("a", honest), _upload("b", np.full((3, 2), np.nan))])
    assert any("train b: update rejected" in f and "no finite" in f for f in coordinator.failures)
    assert set(coordinator.site_train) == {"a"}
    # under sign updates, scaling every scalar changes nothing: the step is lr * sign(estimate)
    scaled = UpdateAveraging(ServerOptimizer(ServerOptConfig()), initial_theta(cfg), cfg)
    scaled.apply_round(1, [_upload("a", 1000 * honest)])
    plain = UpdateAveraging(ServerOptimizer(ServerOptConfig()), initial_theta(cfg), cfg)
    plain.apply_round(1, [_upload("a", honest)])
    np.testing.assert_array_equal(scaled.theta, plain.theta)
    assert not np.array_equal(plain.theta, initial_theta(cfg))
