"""Each hospital's own box habit: its node config, its boxes throughout, and nothing of it sent."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from baps_fed.cli import main
from baps_fed.data.boxes import BoxConfig, sample_box
from baps_fed.data.modalities import synthetic_dataset
from baps_fed.evaluation.evaluate import sample_prompts
from baps_fed.federation.box_habit import habit_moves, habit_report, head_moves
from baps_fed.federation.contract import (
    FedTrainConfig,
    SiteSpec,
    perturbation_key,
    site_id,
    site_prompt_config,
    site_prompt_seed,
    spec_from_flat,
)
from baps_fed.federation.local_site import LocalSite, site_splits
from baps_fed.federation.scenario import Scenario
from baps_fed.flat_config import ConfigKeyError
from baps_fed.fm.sam_batched import BatchedSam
from baps_fed.fm.tiny import save_tiny_weights
from baps_fed.method.spsa_step import batch_rng
from coordinator.app import run_rounds
from sites.app import app as client_app
from sites.outbox import check_outgoing
from tests.conftest import SMALL_ARCH
from tests.federation.test_private_box_head import RecordingFM
from tests.flower_loopback import LoopbackGrid

HIGH = {"box-margin": 0.05, "box-jitter": 0.1, "box-bias": "0,0.2,0,-0.1"}  # draws high
WIDE = {"box-bias": "0.3,0,0.3,0"}  # draws wide, the run's margin and jitter
FUNDUS = synthetic_dataset("fundus", 12)  # every site's data here: same names, same masks
BOX_RUN = FedTrainConfig(local_steps=1, batch_size=3, sp_avg=1, prompt="box", private_head="none")


def _spec(name: str = "a", **habit) -> SiteSpec:
    return spec_from_flat({"data": "fundus", "site-name": name, **habit}, "x")


def _site(
    small_sam, spec: SiteSpec, cfg: FedTrainConfig = BOX_RUN
) -> tuple[LocalSite, RecordingFM]:
    fm = RecordingFM(BatchedSam(small_sam), "small")
    return LocalSite(spec, cfg, fm=fm, data=FUNDUS), fm


def _test_boxes(spec: SiteSpec) -> np.ndarray:
    """The boxes a site draws for its test split, from the prompting and seed ``LocalSite``
    takes (test_a_site_trains_and_evaluates_on_boxes_drawn_with_its_habit: the FM gets them)."""
    test = list(site_splits(spec, FUNDUS)["test"])
    prompting, seed = site_prompt_config(BOX_RUN, spec), site_prompt_seed(BOX_RUN, spec)
    return sample_prompts(test, seed, prompting).boxes


# -- the node config -------------------------------------------------------------------------


def test_a_site_habit_is_read_from_its_node_config():
    spec = _spec(**HIGH)
    assert (spec.box_margin, spec.box_jitter, spec.box_bias) == (0.05, 0.1, "0,0.2,0,-0.1")
    assert spec.habit_keys() == ["box-margin", "box-jitter", "box-bias"]
    box = site_prompt_config(BOX_RUN, spec).box
    assert (box.loose_margin, box.loose_jitter, box.loose_bias) == (0.05, 0.1, (0, 0.2, 0, -0.1))
    wide = site_prompt_config(BOX_RUN, _spec(**WIDE)).box  # unset: the run's
    assert (wide.loose_margin, wide.loose_jitter) == (BOX_RUN.box_margin, BOX_RUN.box_jitter)
    assert _spec(**{"box_margin": "0.2"}).box_margin == 0.2  # field names and strings too
    assert site_prompt_config(BOX_RUN, _spec()) == BOX_RUN.prompt_config()  # no habit


@pytest.mark.parametrize(
    ("habit", "message"),
    [
        ({"box-bias": [0, 0.2, 0, -0.1]}, 'give one string "left,top,right,bottom"'),
        ({"box-bias": "0,0.2,0"}, "left,top,right,bottom"),
        ({"box-bias": "0,2,0,0"}, r"\[-0.5, 1\]"),
        ({"box-margin": 1.5}, "loose_margin must be a fraction"),
        ({"box-jitter": "lots"}, "box-jitter: expected a fraction"),
        ({"box-margin": True}, "box-margin: expected a fraction"),
    ],
)
def test_a_bad_habit_is_refused_with_what_to_write(habit, message):
    with pytest.raises(ValueError, match=message):
        _spec(**habit)


def test_a_misspelt_habit_key_names_the_right_one():
    with pytest.raises(ConfigKeyError, match="did you mean 'box-bias'"):
        _spec(**{"box-bais": "0,0,0,0"})


@pytest.mark.parametrize(
    ("run", "draws"),
    [({}, "one positive point"), ({"prompt": "box", "box_protocol": "tight"}, "one tight box")],
)
def test_a_habit_the_run_cannot_use_is_refused_naming_the_site_and_what_to_set(run, draws):
    with pytest.raises(ValueError) as err:
        site_prompt_config(FedTrainConfig(**run), _spec("hospital-b", **WIDE))
    text = str(err.value)
    assert "\n" not in text and "'hospital-b'" in text and draws in text
    assert "prompt = box and box-protocol = loose" in text and "drop box-bias" in text


def test_a_scenario_passes_each_site_its_habit_and_checks_it_against_the_run(tmp_path):
    path = tmp_path / "habits.toml"
    path.write_text(
        '[train]\nprompt = "box"\n\n'
        '[[site]]\nname = "a"\ndata = "fundus"\nbox-margin = 0.02\nbox-jitter = 0.02\n\n'
        '[[site]]\nname = "b"\ndata = "fundus"\nbox-bias = "0,0.2,0,-0.1"\n\n'
        '[[site]]\nname = "c"\ndata = "fundus"\n'
    )
    scenario = Scenario.load(path)
    scenario.check(tmp_path / "run", None)
    a, b, c = scenario.site_specs()
    assert (a.box_margin, a.box_jitter, a.box_bias) == (0.02, 0.02, "")
    assert (b.box_margin, b.box_bias, c.habit_keys()) == (None, "0,0.2,0,-0.1", [])
    scenario.train["prompt"] = "point"
    with pytest.raises(ValueError, match="site 'a' sets a box habit"):
        scenario.check(tmp_path / "run", None)


def test_baps_fed_site_passes_its_habit_in_the_node_config(tmp_path, monkeypatch):
    import baps_fed.launch.site as launch_site

    seen = {}

    def fake_run_site(settings, group):
        seen.update(settings.node_config)
        return 0

    monkeypatch.setattr(launch_site, "run_site", fake_run_site)
    common = ["site", "--superlink", "x:1", "--insecure", "--name", "b", "--data", "fundus"]
    assert main([*common, "--out", str(tmp_path), "--box-margin", "0.05",
                 "--box-bias=0,0.2,0,-0.1"]) == 0  # fmt: skip
    assert (seen["box-margin"], seen["box-bias"]) == (0.05, "0,0.2,0,-0.1")
    assert "box-jitter" not in seen  # unset: the run's
    assert _spec(**{k: v for k, v in seen.items() if k.startswith("box-")}).habit_keys()
    seen.clear()
    assert main([*common, "--out", str(tmp_path)]) == 0
    assert not any(k.startswith("box-") for k in seen)  # no habit: the node config of before


# -- the site's boxes ------------------------------------------------------------------------


def test_a_site_trains_and_evaluates_on_boxes_drawn_with_its_habit(small_sam):
    spec = _spec("a", **HIGH)
    site, fm = _site(small_sam, spec)
    habit = BoxConfig(loose_margin=0.05, loose_jitter=0.1, loose_bias=(0, 0.2, 0, -0.1))
    assert site.prompting.box == habit
    site.train_round(np.zeros(site.decoder.num_params, np.float32), 1, None)
    rng = batch_rng(perturbation_key(BOX_RUN, 1, site_id("a"), 0), 0)  # the step's batch
    idx = rng.choice(site.num_train, BOX_RUN.batch_size, replace=site.num_train < 3)
    drawn = np.stack([sample_box(site.masks[i], rng, habit) for i in idx])
    np.testing.assert_array_equal(fm.boxes[0][: len(idx)], drawn)  # the first perturbed copy

    seed = BOX_RUN.point_seed * 2**32 + site_id("a")  # the site's own evaluation draws
    test = site.splits["test"]
    expected = [
        sample_box(s.mask, np.random.default_rng([seed, zlib.crc32(s.name.encode())]), habit)
        for s in test
    ]
    fm.boxes.clear()
    site.evaluate(np.zeros(site.decoder.num_params, np.float32))
    zero_shot, tuned = fm.boxes[0], fm.boxes[1]
    np.testing.assert_array_equal(zero_shot, np.stack(expected))
    np.testing.assert_array_equal(tuned, zero_shot)  # no box head: the same boxes
    fm.boxes.clear()
    site.evaluate(np.zeros(site.decoder.num_params, np.float32), split="val")
    val = site.splits["val"]
    rngs = [np.random.default_rng([seed, zlib.crc32(s.name.encode())]) for s in val]
    drawn = [sample_box(s.mask, r, habit) for s, r in zip(val, rngs, strict=True)]
    np.testing.assert_array_equal(fm.boxes[0], np.stack(drawn))


def test_habits_and_names_give_each_site_its_own_draws_reproducibly():
    """Same data and sample names throughout: only the habit or the site's name differs."""
    boxes = {
        key: _test_boxes(_spec(name, **habit))
        for key, name, habit in [
            ("high-a", "a", HIGH), ("wide-a", "a", WIDE), ("high-b", "b", HIGH),
            ("plain-a", "a", {}), ("plain-b", "b", {}),
        ]
    }  # fmt: skip
    assert not np.array_equal(boxes["high-a"], boxes["wide-a"])  # two habits
    assert not np.array_equal(boxes["high-a"], boxes["high-b"])  # one habit, two hospitals
    np.testing.assert_array_equal(boxes["plain-a"], boxes["plain-b"])  # no habit: as before
    again = _test_boxes(_spec("a", **HIGH))
    np.testing.assert_array_equal(again, boxes["high-a"])  # a site's draws are reproducible
    # drawing high: the tops sit higher, the bottoms lower by less, than the run's boxes
    high, plain = boxes["high-a"], boxes["plain-a"]
    assert np.median(plain[:, 1] - high[:, 1]) > 0


def test_the_learnt_head_is_told_against_the_habit_in_fractions_of_the_drawn_box():
    habit = BoxConfig(loose_margin=0.1, loose_bias=(0, 0.2, 0, -0.1))
    moves = habit_moves(habit)  # mask box + 0.1 + 0.1 wide, + 0.3 + 0.0 high
    assert moves == pytest.approx({"left": 0.1 / 1.2, "top": 0.3 / 1.3, "right": 0.1 / 1.2,
                                   "bottom": 0.0})  # fmt: skip
    head = np.array([0.08, 0.17, -0.02, 0.0], np.float32)
    assert head_moves(head) == pytest.approx({"left": 0.08, "top": 0.17, "right": -0.02,
                                              "bottom": 0.0})  # fmt: skip
    report = habit_report(habit, head)
    assert (
        "top: draws 0.23 out, head 0.17 in" in report
        and "right: draws 0.08 out, head 0.02 out" in report
    )
    with pytest.raises(ValueError, match="one move per side"):
        head_moves(np.zeros(5))
    with pytest.raises(ValueError, match="loose-box"):
        habit_moves(BoxConfig(protocol="tight"))


def test_undoing_the_habit_by_the_reported_moves_gives_back_the_masks_box():
    """habit_moves is the inward move (box_refiner's) that takes a jitter-free drawn box back."""
    import torch

    from baps_fed.method.box_refiner import refine_boxes

    mask = np.zeros((1000, 1000), bool)
    mask[300:500, 400:500] = True  # mask box (400, 300, 499, 499): 100 wide, 200 high
    habit = BoxConfig(loose_margin=0.1, loose_jitter=0.0, loose_bias=(0.3, 0.2, 0, -0.1))
    drawn = sample_box(mask, np.random.default_rng(0), habit)
    inwards = np.array(list(habit_moves(habit).values()))
    coef = torch.as_tensor(inwards).view(1, 4, 1)
    back = refine_boxes(coef, torch.ones(1, 1), drawn[None], (1000, 1000))[0, 0]
    np.testing.assert_allclose(back, [400, 300, 499, 499], atol=1.0)  # within the +1 px size


# -- nothing of it leaves the site -------------------------------------------------------------


def test_replies_of_sites_with_habits_carry_nothing_of_them(tmp_path, small_sam):
    weights = tmp_path / "fm.pt"
    save_tiny_weights(weights, small_sam, SMALL_ARCH, {})
    fm = f"tiny:{weights}"
    nodes = {
        11: {"data": "fundus", "site-name": "a", "n": 12, "fm": fm, **HIGH},
        12: {"data": "fundus", "site-name": "b", "n": 12, "fm": fm, **WIDE},
    }
    run_config = {
        "rounds": 1, "min-sites": 2, "local-steps": 1, "batch-size": 2, "sp-avg": 1,
        "prompt": "box", "private-head": "box", "out-dir": str(tmp_path / "run"),
        "sites": json.dumps([]),
    }  # fmt: skip
    grid = LoopbackGrid(client_app, nodes, run_config)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                      run_config=run_config)  # fmt: skip
    state = run_rounds(grid, context)
    assert state.round == 1 and set(state.history[0]["evaluate"]) == {"a", "b"}
    replies = [
        r for r in grid.replies if r.metadata.message_type.split(".")[0] in ("train", "evaluate")
    ]
    assert len(replies) == 4
    habit_words = {"box", "bias", "margin", "jitter", "habit"}
    for reply in replies:
        assert not reply.has_error()
        kind = reply.metadata.message_type
        check_outgoing(reply.content, kind, 72)  # the allow-list, as it stands
        for name, record in reply.content.items():
            assert name in ("arrays", "metrics", "site")
            for key in record.keys():
                assert not any(word in key for word in habit_words), (kind, name, key)
        assert list(reply.content["site"].keys()) == ["name"]
        text = json.dumps({k: repr(v) for k, v in reply.content["metrics"].items()})
        assert "0,0.2,0,-0.1" not in text and "0.3,0,0.3,0" not in text
