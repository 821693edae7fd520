"""A site's state lives on its disk, per run: a restarted site (fresh process, empty
context.state) continues its SPSA step count, private head and privacy ledger, and a
coordinator restarted with --resume then reaches the uninterrupted run's decoder bit for bit."""

from __future__ import annotations

import json
import stat

import numpy as np
import pytest
from flwr.app import Context, Message, MessageType, RecordDict

from baps_fed.federation.site_state import SiteState, SiteStateStore, state_path
from baps_fed.fm.tiny import save_tiny_weights
from coordinator.app import run_rounds
from sites.app import app as client_app
from tests.conftest import SMALL_ARCH
from tests.flower_loopback import LoopbackGrid


@pytest.fixture
def federation(tmp_path, small_sam):
    weights = tmp_path / "fm.pt"
    save_tiny_weights(weights, small_sam, SMALL_ARCH, {})

    def make(rounds: int, out, state_root, resume: bool = False, **extra):
        sites = [
            {"data": "fundus", "site-name": "a", "n": 16, "seed": 1, "fm": f"tiny:{weights}",
             "state-dir": str(state_root / "a")},
            {"data": "ultrasound", "site-name": "b", "n": 24, "seed": 2,
             "fm": f"tiny:{weights}", "state-dir": str(state_root / "b")},
        ]  # fmt: skip
        run_config = {
            "rounds": rounds, "min-sites": 1, "local-steps": 2, "batch-size": 2, "sp-avg": 2,
            "out-dir": str(out), "resume": resume, "sites": json.dumps(sites), **extra,
        }  # fmt: skip
        # a new grid is a fresh SuperNode process per site: its context.state is empty
        grid = LoopbackGrid(client_app, {11: {"partition-id": 0}, 12: {"partition-id": 1}},
                            run_config)  # fmt: skip
        context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                          run_config=run_config)  # fmt: skip
        return grid, context

    return make


def test_restarted_sites_and_coordinator_reach_the_uninterrupted_decoder(federation, tmp_path):
    whole = run_rounds(*federation(2, tmp_path / "whole", tmp_path / "whole-sites"))
    run_rounds(*federation(1, tmp_path / "cut", tmp_path / "cut-sites"))
    # everything restarts: the coordinator with --resume, every site with an empty memory
    resumed = run_rounds(*federation(2, tmp_path / "cut", tmp_path / "cut-sites", resume=True))
    np.testing.assert_array_equal(resumed.theta, whole.theta)
    for r, w in zip(resumed.history, whole.history, strict=True):
        assert r["train"]["a"]["spsa-step"] == w["train"]["a"]["spsa-step"]
    assert resumed.history[1]["train"]["a"]["spsa-step"] == 2  # it went on, not from 0
    files = list((tmp_path / "cut-sites" / "a").iterdir())
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    assert stat.S_IMODE((tmp_path / "cut-sites" / "a").stat().st_mode) == 0o700


def test_a_restarted_site_keeps_spending_epsilon(federation, tmp_path):
    dp = {"dp": True}
    whole = run_rounds(*federation(2, tmp_path / "whole", tmp_path / "whole-sites", **dp))
    run_rounds(*federation(1, tmp_path / "cut", tmp_path / "cut-sites", **dp))
    resumed = run_rounds(
        *federation(2, tmp_path / "cut", tmp_path / "cut-sites", resume=True, **dp)
    )
    first, second = (e["train"]["b"]["epsilon"] for e in resumed.history)
    assert 0 < first < second  # the ledger went on from round 1's spending
    assert second == pytest.approx(whole.history[1]["train"]["b"]["epsilon"])


def test_a_new_run_gets_new_state_and_a_damaged_file_is_refused(tmp_path):
    state = SiteState(private=np.ones(3, np.float32), privacy=[(1.0, 0.1, 8)])
    store = SiteStateStore(tmp_path / "site", "0123456789abcdef")
    store.save(1, state)
    loaded = store.after(1)
    assert loaded.privacy == [(1.0, 0.1, 8)] and np.array_equal(loaded.private, state.private)
    assert SiteStateStore(tmp_path / "site", "fedcba9876543210").before(2).spsa is None
    path = state_path(tmp_path / "site", "0123456789abcdef", 1)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match="privacy ledger"):
        store.after(1)
    with pytest.raises(ValueError, match="not a hex name"):
        SiteStateStore(tmp_path, "../../etc/passwd")


def test_a_round_sent_again_trains_from_before_it_and_its_epsilon_stays_spent(tmp_path):
    store = SiteStateStore(tmp_path, "0123456789abcdef")
    after = {r: SiteState(private=np.full(2, r, np.float32), privacy=[(1.0, 0.1, 8 * r)])
             for r in (1, 2, 3)}  # fmt: skip
    for r, state in after.items():
        store.save(r, state)
    # the coordinator died before checkpointing round 3 and sends it again
    again = store.before(3)
    assert np.array_equal(again.private, after[2].private)  # trained as the first time
    assert again.privacy == [(1.0, 0.1, 24)]  # but round 3's release stays spent
    assert len(list(tmp_path.iterdir())) == 2  # rounds 2 and 3 kept, older ones dropped


def test_a_round_resent_after_a_missed_one_trains_from_the_newest_state_before_it(tmp_path):
    store = SiteStateStore(tmp_path, "0123456789abcdef")
    after = {r: SiteState(private=np.full(2, r, np.float32), privacy=[(1.0, 0.1, 8 * r)])
             for r in (1, 3, 4, 6)}  # fmt: skip
    store.save(1, after[1])  # the site misses round 2, trains round 3
    store.save(3, after[3])
    again = store.before(3)  # the coordinator died before checkpointing round 3
    assert np.array_equal(again.private, after[1].private)  # not a fresh state
    assert again.privacy == after[3].privacy  # round 3's release stays spent
    store.save(4, after[4])
    store.save(6, after[6])  # round 5 missed too
    assert np.array_equal(store.before(6).private, after[4].private)
    assert sorted(p.name[-9:-4] for p in tmp_path.iterdir()) == ["00004", "00006"]  # bounded


class _CoordinatorKilled(Exception):
    pass


def _b_misses_round_2(grid: LoopbackGrid, kill_in_round: int | None = None) -> None:
    """Site b (node 12) is killed as round 2's train message reaches it and restarted (an empty
    memory) for round 3; with ``kill_in_round``, the coordinator dies once that round's sites
    have trained, before it checkpoints the round."""

    def on_deliver(msg: Message) -> None:
        rnd = int(msg.content["config"]["server-round"])
        train = msg.metadata.message_type == MessageType.TRAIN
        if train and rnd == 2 and msg.metadata.dst_node_id == 12:
            grid.down.add(12)
        elif not train and rnd == 2 and 12 in grid.down:
            grid.down.discard(12)
            grid.contexts[12].state = RecordDict()
        elif not train and rnd == kill_in_round:
            raise _CoordinatorKilled

    grid.on_deliver = on_deliver


def test_a_site_that_missed_a_round_continues_when_the_next_round_is_resent(federation, tmp_path):
    """The issue's scenario: b misses round 2, trains round 3; the coordinator is killed before
    checkpointing round 3, resumed, and sends round 3 again to restarted sites."""
    grid, context = federation(3, tmp_path / "whole", tmp_path / "whole-sites")
    _b_misses_round_2(grid)
    whole = run_rounds(grid, context)
    grid, context = federation(3, tmp_path / "cut", tmp_path / "cut-sites")
    _b_misses_round_2(grid, kill_in_round=3)
    with pytest.raises(_CoordinatorKilled):
        run_rounds(grid, context)
    resumed = run_rounds(*federation(3, tmp_path / "cut", tmp_path / "cut-sites", resume=True))
    assert [sorted(e["train"]) for e in whole.history] == [["a", "b"], ["a"], ["a", "b"]]
    np.testing.assert_array_equal(resumed.theta, whole.theta)
    assert resumed.history[2]["train"]["b"]["spsa-step"] == 2  # round 1's 2 steps, not 0
    for site in ("a", "b"):  # the resent round trained as the first time (its loss too)
        again, first = (
            {k: v for k, v in run.history[2]["train"][site].items() if k != "seconds"}
            for run in (resumed, whole)
        )
        assert again == first
