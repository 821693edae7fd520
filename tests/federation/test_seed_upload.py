"""Seed-and-scalar uploads: the coordinator's replay rebuilds a site's update bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from baps_fed.data.modalities import synthetic_dataset
from baps_fed.federation.aggregation import combine_scalars
from baps_fed.federation.contract import FedTrainConfig, SiteSpec, initial_theta, perturbation_key
from baps_fed.federation.local_site import LocalSite
from baps_fed.federation.replica import SiteReplica
from baps_fed.federation.round_aggregator import RoundAggregator
from baps_fed.federation.seed_upload import CodecError, pack_scalars, unpack_scalars
from baps_fed.federation.server_optimizer import ServerOptConfig, ServerOptimizer
from baps_fed.federation.uploads import SiteUpload
from baps_fed.fm.sam_batched import BatchedSam
from baps_fed.fm.torch_fm import TorchSamFM
from baps_fed.method.spsa import SpsaState, step_perturbations


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
        {"private_head": "basis", "personal_keep": 0.5, "shared_perturbations": True},
    ],
    ids=["private-head-and-own-decoder", "dp", "shared-perturbations"],
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


def _upload(name: str, scalars: np.ndarray, step: int = 0) -> SiteUpload:
    blob = np.frombuffer(pack_scalars(0.1, scalars), np.uint8)
    return SiteUpload(name, {"scalars": blob}, {"num-examples": 10.0, "spsa-step": float(step)})


def test_the_coordinator_rejects_a_site_whose_scalars_are_all_nan_and_says_which():
    cfg = FedTrainConfig(local_steps=3, sp_avg=2, private_head="none")
    honest = np.random.default_rng(1).normal(size=(3, 2)).astype(np.float32)
    coordinator = RoundAggregator(ServerOptimizer(ServerOptConfig()), initial_theta(cfg), cfg)
    assert coordinator.apply_round(1, [_upload("a", honest), _upload("b", np.full((3, 2), np.nan))])
    assert any("train b: update rejected" in f and "no finite" in f for f in coordinator.failures)
    assert set(coordinator.site_train) == {"a"}
    # under sign updates, scaling every scalar changes nothing: the step is lr * sign(estimate)
    scaled = RoundAggregator(ServerOptimizer(ServerOptConfig()), initial_theta(cfg), cfg)
    scaled.apply_round(1, [_upload("a", 1000 * honest)])
    plain = RoundAggregator(ServerOptimizer(ServerOptConfig()), initial_theta(cfg), cfg)
    plain.apply_round(1, [_upload("a", honest)])
    np.testing.assert_array_equal(scaled.theta, plain.theta)
    assert not np.array_equal(plain.theta, initial_theta(cfg))


def test_shared_perturbations_are_the_same_at_every_site_whatever_its_step():
    spsa = FedTrainConfig(sp_avg=2).spsa_config(0.1)
    for shared in (False, True):
        cfg = FedTrainConfig(shared_perturbations=shared)
        # site 1 is at optimiser step 0, site 2 missed rounds and is at step 7: local step 1
        d1 = step_perturbations(perturbation_key(cfg, 3, 1, 0), SpsaState(step=1), spsa, 9)
        d2 = step_perturbations(perturbation_key(cfg, 3, 2, 7), SpsaState(step=8), spsa, 9)
        assert np.array_equal(d1, d2) == shared
    cfg = FedTrainConfig(shared_perturbations=True)  # and they differ from round to round
    other = step_perturbations(perturbation_key(cfg, 4, 1, 0), SpsaState(step=1), spsa, 9)
    assert not np.array_equal(d1, other)


def test_combining_scalars_one_by_one_ignores_outliers_and_nan():
    honest = [np.full((2, 3), v, np.float32) for v in (0.9, 1.0, 1.1)]
    bad = np.array([[-1e6, np.nan, 5.0], [np.nan, np.nan, np.nan]], np.float32)
    median = combine_scalars([*honest, bad], "scalar-median")
    np.testing.assert_allclose(median, [[0.95, 1.0, 1.05], [1.0, 1.0, 1.0]], rtol=1e-6)
    trimmed = combine_scalars([*honest, bad], "scalar-trimmed-mean", trim=0.25)
    np.testing.assert_allclose(trimmed, [[0.95, 1.0, 1.05], [1.0, 1.0, 1.0]], rtol=1e-6)
    lost = combine_scalars([np.full((1, 2), np.nan)], "scalar-median")
    assert np.isnan(lost).all()  # nobody measured it: the replay skips that estimate


def test_scalar_median_replays_the_honest_scalars_despite_a_sign_flipping_site():
    cfg = FedTrainConfig(local_steps=3, sp_avg=2, upload="seeds", shared_perturbations=True)
    honest = np.random.default_rng(1).normal(size=(3, 2)).astype(np.float32)

    def run(aggregation: str, uploads: list[SiteUpload]) -> np.ndarray:
        coordinator = RoundAggregator(
            ServerOptimizer(ServerOptConfig()), initial_theta(cfg), cfg, aggregation=aggregation
        )
        assert coordinator.apply_round(1, uploads)
        return coordinator.theta

    sites = [_upload(n, honest) for n in "abc"]
    attacked = [*sites, _upload("d", -100 * honest)]
    clean = run("mean", sites)  # three honest sites: the mean of their identical updates
    assert not np.array_equal(clean, initial_theta(cfg))
    np.testing.assert_array_equal(run("scalar-median", attacked), clean)
    np.testing.assert_array_equal(run("scalar-trimmed-mean", attacked), clean)
    assert not np.array_equal(run("mean", attacked), clean)


@pytest.mark.parametrize("settings", [{"upload": "dense"}, {"upload": "seeds"}])
def test_scalar_aggregation_without_shared_seed_uploads_is_refused(settings):
    cfg = FedTrainConfig(**settings)
    with pytest.raises(ValueError, match="shared-perturbations = true"):
        RoundAggregator(
            ServerOptimizer(ServerOptConfig()), initial_theta(cfg), cfg, aggregation="scalar-median"
        )
