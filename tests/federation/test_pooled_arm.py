"""The pooled-centralised arm of the benchmarks: every site's training split and nothing else,
each case prompted with its own site's box habit, at the federation's FM budget."""

from __future__ import annotations

import numpy as np

from baps_fed.data.manifest import restrict
from baps_fed.data.prompts import sample_prompt, sample_prompts
from baps_fed.data.sources import open_source
from baps_fed.federation.comparison import pooled_site, run_seed
from baps_fed.federation.contract import FedTrainConfig, spec_from_flat
from baps_fed.federation.local_site import LocalSite
from baps_fed.federation.scenario import Scenario
from baps_fed.federation.server_optimizer import ServerOptConfig
from baps_fed.fm.sam_batched import BatchedSam
from baps_fed.fm.torch_fm import TorchSamFM
from tests.data.site_folders import write_site
from tests.federation.test_site_box_habit import FUNDUS, HIGH, WIDE

RUN = FedTrainConfig(local_steps=1, batch_size=2, sp_avg=1, prompt="box", private_head="box")


def _site(fm, name: str, data, **node) -> LocalSite:
    spec = spec_from_flat({"data": "fundus", "site-name": name, **node}, name)
    return LocalSite(spec, RUN, fm=fm, data=data)


def test_each_pooled_case_is_drawn_with_its_own_site_habit(small_sam):
    fm = TorchSamFM(BatchedSam(small_sam), "small")
    high, wide = _site(fm, "high", FUNDUS, **HIGH), _site(fm, "wide", FUNDUS, **WIDE)
    pooled = pooled_site([high, wide], RUN, fm)
    np.testing.assert_array_equal(pooled.images, np.concatenate([high.images, wide.images]))
    idx = np.arange(pooled.num_train)
    drawn = sample_prompts(pooled.masks, idx, np.random.default_rng(7), pooled.step_cfg.prompt)
    rng = np.random.default_rng(7)  # the same draws, each case with its own site's config
    owners = [high] * high.num_train + [wide] * wide.num_train
    expected = [sample_prompt(pooled.masks[i], rng, owners[i].prompting) for i in idx]
    np.testing.assert_array_equal(drawn.boxes, np.stack(expected).astype(np.float32))
    as_run = sample_prompts(pooled.masks, idx, np.random.default_rng(7), RUN.prompt_config())
    assert not np.array_equal(drawn.boxes, as_run.boxes)  # the habits do change the boxes


def test_the_pool_holds_the_sites_training_splits_only(tmp_path, small_sam):
    folder = write_site(tmp_path / "videos", sequences=8, frames=2)
    data = open_source(str(folder), layout="generic", size=128)
    fm = TorchSamFM(BatchedSam(small_sam), "small")
    node = {"group-by": "sequence"}
    sites = [
        _site(fm, "a", data, subset="sequence=1,2,3,4", **node),
        _site(fm, "b", data, subset="sequence=5,6,7,8", **node),
    ]
    pooled = pooled_site(sites, RUN, fm)
    pool = [c.name for c in pooled.splits["train"]]
    assert pool == [c.name for s in sites for c in s.splits["train"]]
    held_out = {c.name for s in sites for split in ("val", "test") for c in s.splits[split]}
    assert held_out and not held_out & set(pool)  # no test or validation case is trained on
    whole = {c.name for c in restrict(data, "", "sequence")}
    assert set(pool) < whole


def test_a_seed_reports_each_private_head_and_spends_equal_budgets(small_sam):
    scenario = Scenario(
        [{"name": "high", "data": "fundus", "n": 12, **HIGH},
         {"name": "wide", "data": "fundus", "n": 12, "seed": 1, **WIDE}],
        rounds=2,
        train={"prompt": "box", "private-head": "box"},
    )  # fmt: skip
    fm = TorchSamFM(BatchedSam(small_sam), "small")
    out = run_seed(scenario, RUN, 2, 0, fm, ServerOptConfig())
    assert out["pooled_queries"] == out["federated_queries"] == out["local_only_queries"] > 0
    for arm in ("federated_private", "local_only_private"):
        heads = out[arm]
        assert set(heads) == {"high", "wide"}
        assert all(len(h) == 4 and np.any(h) for h in heads.values())  # 4 learnt side moves
    assert set(out["pooled"]) == {"high", "wide"}
