"""Membership inference: the attacks' scores, the attacker's views of a site's uploads, and a
tiny audit end to end through ``baps-fed privacy-audit``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from baps_fed.cli import main
from baps_fed.data.prompts import PromptConfig
from baps_fed.federation.contract import FedTrainConfig, SiteSpec
from baps_fed.federation.server_optimizer import ServerOptConfig
from baps_fed.fm.sam_batched import BatchedSam
from baps_fed.fm.torch_fm import TorchSamFM
from baps_fed.privacy_audit.candidates import site_pool
from baps_fed.privacy_audit.membership import loss_attack, reference_attack
from baps_fed.privacy_audit.roc import auc
from baps_fed.privacy_audit.site_runs import RecordingSite, run_shadow, run_target, shadow_halves
from baps_fed.privacy_audit.views import AttackerModels, dense_view, seeds_view


def test_the_loss_attack_centres_each_site_on_its_median():
    # site 0 is easy (losses ~0.2), site 1 hard (~0.8); members have the lower loss in each
    losses = np.array([0.1, 0.3, 0.2, 0.7, 0.9, 0.8])
    site_of = np.array([0, 0, 0, 1, 1, 1])
    scores = loss_attack(losses, site_of)
    np.testing.assert_allclose(scores, [0.1, -0.1, 0.0, 0.1, -0.1, 0.0])  # hard-site members too


def test_the_reference_attack_scores_by_the_closer_of_the_in_and_out_means():
    # candidate 0: in-shadows fit it better (loss 0.2 vs 0.6); candidate 1: no difference
    shadows = np.array([[0.2, 0.5], [0.6, 0.5]])
    inside = np.array([[True, False], [False, True]])
    fits = reference_attack(np.array([0.25, 0.5]), shadows, inside)
    misfits = reference_attack(np.array([0.55, 0.5]), shadows, inside)
    assert fits[0] > 0 > misfits[0]
    assert fits[1] == misfits[1] == 0.0
    with pytest.raises(ValueError, match="shadows"):
        reference_attack(np.zeros(3), shadows, inside)


def test_shadow_halves_are_complementary_pairs():
    halves = shadow_halves(10, 4, np.random.default_rng(0))
    assert halves.shape == (4, 10) and (halves.sum(1) == 5).all()
    assert (halves[0] ^ halves[1]).all() and (halves[2] ^ halves[3]).all()
    with pytest.raises(ValueError, match="even"):
        shadow_halves(10, 3, np.random.default_rng(0))


def test_the_views_rebuild_what_the_site_trained_and_shadows_start_where_it_did(small_sam):
    cfg = FedTrainConfig(local_steps=2, batch_size=2, sp_avg=2, private_head="basis")
    fm = TorchSamFM(BatchedSam(small_sam), "small")
    pools = [site_pool(SiteSpec("a", "fundus", n=12), PromptConfig(), 128, seed=0)]
    sites, _ = run_target(pools, cfg, fm, 2, ServerOptConfig())
    site = sites[0]
    assert len(site.images) == pools[0].members.sum() == 6  # trains on its members alone
    models = AttackerModels.of(site)
    dense = dense_view(site.record, cfg)
    full = seeds_view(site.record, cfg, models.n_private)
    # the seed uploads replay to the dense view (up to float32 rounding of global + update),
    # plus the private head
    np.testing.assert_allclose(full[: dense.size], dense, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(dense, site.record.globals[-1] + site.record.dense[-1])
    assert np.abs(full[dense.size :]).max() > 0  # the private head moved, and the view sees it
    attacker = RecordingSite(pools[0], np.ones(12, bool), cfg, fm)
    shadow = run_shadow(attacker, pools[0], ~pools[0].members, site.record)
    assert shadow.rounds == site.record.rounds
    for theirs, ours in zip(shadow.globals, site.record.globals, strict=True):
        np.testing.assert_array_equal(theirs, ours)
    assert not np.array_equal(shadow.dense[0], site.record.dense[0])  # other data, other update


SCENARIO = """
rounds = 1
[train]
local-steps = 1
batch-size = 2
sp-avg = 1
private-head = "none"
[[site]]
name = "fundus-a"
data = "fundus"
n = 12
seed = 1
"""


def test_a_tiny_membership_audit_end_to_end(tmp_path, capsys):
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(SCENARIO)
    out = tmp_path / "audit"
    args = ["privacy-audit", "--scenario", str(scenario), "--epsilons", "1", "--shadows", "2"]
    args += ["--part", "membership", "--bootstrap", "50", "--out", str(out)]
    assert main(args) == 0
    report = json.loads((out / "privacy_audit.json").read_text())["membership"]
    assert [s["members"] for s in report["sites"]] == [6]
    (setting,) = report["settings"]
    assert setting["setting"] == "epsilon 1" and setting["accountant_epsilon"] <= 1.0 + 1e-6
    rows = {(a["upload"], a["attack"]): a for a in setting["attacks"]}
    assert set(rows) == {(u, a) for u in ("dense", "seeds") for a in ("loss", "reference")}
    for row in rows.values():
        assert row["members"] == row["non_members"] == 6
        assert row["auc"]["low"] <= row["auc"]["value"] <= row["auc"]["high"]
    assert (out / "roc_epsilon_1.png").stat().st_size > 0
    assert "| epsilon 1 | " in (out / "privacy_audit.md").read_text()
    assert "report:" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flags, message",
    [(["--shadows", "3"], "even"), (["--epsilons", "off", "0"], "epsilons must be > 0")],
)
def test_bad_settings_are_one_line_errors(tmp_path, capsys, flags, message):
    code = main(["privacy-audit", "--part", "membership", "--out", str(tmp_path), *flags])
    assert code == 2
    assert message in capsys.readouterr().err


def test_two_audits_with_their_own_seeds_pool_into_one(tmp_path, capsys):
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(SCENARIO)
    runs = []
    for seed in (0, 1):
        runs.append(tmp_path / f"audit-{seed}")
        args = ["privacy-audit", "--scenario", str(scenario), "--epsilons", "off"]
        args += ["--shadows", "0", "--part", "membership", "--bootstrap", "20"]
        assert main([*args, "--seed", str(seed), "--out", str(runs[-1])]) == 0
    out = tmp_path / "pooled"
    assert main(["privacy-audit", "--pool", *map(str, runs), "--out", str(out)]) == 0
    pooled = json.loads((out / "privacy_audit.json").read_text())["membership"]
    one = [json.loads((r / "privacy_audit.json").read_text())["membership"] for r in runs]
    assert pooled["pooled"] == 2 and pooled["sites"][0]["members"] == 12
    (setting,) = pooled["settings"]
    for k, row in enumerate(setting["attacks"]):
        scores = sum((o["settings"][0]["attacks"][k]["scores"] for o in one), [])
        members = sum((o["settings"][0]["members"] for o in one), [])
        assert row["members"] == 12 and row["non_members"] == 12
        assert row["auc"]["value"] == pytest.approx(auc(np.array(scores), np.array(members, bool)))
    assert "Pooled from 2 audits" in (out / "privacy_audit.md").read_text()
    # a third audit of other settings is refused, naming what differs
    other = tmp_path / "other"
    args = ["privacy-audit", "--scenario", str(scenario), "--epsilons", "off", "--shadows", "0"]
    assert main([*args, "--part", "membership", "--rounds", "2", "--out", str(other)]) == 0
    capsys.readouterr()
    assert (
        main(["privacy-audit", "--pool", str(runs[0]), str(other), "--out", str(tmp_path / "x")])
        == 2
    )
    assert "differs from audit 1 in rounds" in capsys.readouterr().err
