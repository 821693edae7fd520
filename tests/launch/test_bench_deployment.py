"""simulations/bench_deployment.py's arithmetic and files, on made-up runs (no process started)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "bench_deployment", ROOT / "simulations/bench_deployment.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _history(walls: list[float], spsa: float) -> list[dict]:
    train = {"a": {"seconds": spsa, "num-examples": 10}, "b": {"seconds": spsa + 1}}
    return [
        {"round": i + 1, "seconds": w, "train": train, "evaluate": {"a": {}, "b": {}}}
        for i, w in enumerate(walls)
    ]


def _events(t0: float) -> list[tuple[float, str]]:
    """Site a's SuperNode log over two rounds: train then evaluate each round."""
    return [
        (t0 + 0.0, "Receiving: train message (ID: 1)"),
        (t0 + 20.0, "Sending: train message (ID: 2)"),
        (t0 + 22.0, "Receiving: evaluate message (ID: 3)"),
        (t0 + 30.0, "Sending: evaluate message (ID: 4)"),
        (t0 + 35.0, "Receiving: train message (ID: 5)"),
        (t0 + 50.0, "Sending: train message (ID: 6)"),
        (t0 + 51.0, "Receiving: evaluate message (ID: 7)"),
        (t0 + 58.0, "Sending: evaluate message (ID: 8)"),
    ]


def test_rounds_ratio_and_goal(bench):
    rows = bench.round_rows(_history([20.0, 10.0, 10.0], 4.0), _history([40.0, 10.5, 11.5], 5.0))
    assert [r["ratio"] for r in rows] == pytest.approx([2.0, 1.05, 1.15])
    assert rows[0]["sim_compute_s"] == {"a": 4.0, "b": 5.0}
    assert rows[0]["dep_compute_s"] == {"a": 5.0, "b": 6.0}
    goal = bench.goal_summary(rows)  # round 1 (sites connecting) does not count
    assert goal["max_ratio_from_round_2"] == pytest.approx(1.15) and not goal["met"]
    assert goal["total_ratio_from_round_2"] == pytest.approx(22.0 / 20.0)
    assert bench.goal_summary(rows[:2])["met"]


def test_messages_are_matched_to_their_processes_and_overhead_excludes_the_steps(bench):
    dep = _history([60.0, 30.0], 5.0)
    starts = [1.0, 22.5, 35.5, 51.5]
    procs = [{"cmd": "python flower-superexec", "start": 0.0, "last_seen": 99.0}] + [
        {"cmd": "python flwr-clientapp --x", "start": 1000 + s, "last_seen": 1000 + s + 9}
        for s in starts
    ]
    msgs = bench.message_timeline("a", procs, _events(1000.0), dep)
    assert [(m["round"], m["phase"]) for m in msgs] == [
        (1, "train"), (1, "evaluate"), (2, "train"), (2, "evaluate"),
    ]  # fmt: skip
    # round 1's train: process at +1, reply at +20, 5 s of SPSA: 14 s before the first query
    assert msgs[0]["overhead_s"] == pytest.approx(14.0)
    assert msgs[2]["overhead_s"] == pytest.approx(50.0 - 5.0 - 35.5)
    assert "overhead_s" not in msgs[1] and msgs[1]["lifetime_s"] == pytest.approx(9.0)
    summary = bench.overhead_summary({"a": msgs})
    assert summary["messages"] == summary["clientapp_processes"] == 4
    assert summary["received_to_process_start_median_s"] == pytest.approx(0.5)
    rows = bench.round_breakdown({"a": msgs}, dep)
    assert rows[0] == {
        "round": 1, "site": "a", "wall_s": 60.0, "train_s": 20.0, "spsa_s": 5.0,
        "between_s": 2.0, "evaluate_s": 8.0, "rest_s": 30.0,
    }  # fmt: skip
    # a process count that does not match the messages: no process columns, no guessing
    unmatched = bench.message_timeline("a", procs[:3], _events(1000.0), dep)
    assert all("app_start" not in m and "overhead_s" not in m for m in unmatched)


def test_the_markdown_names_the_command_the_ratio_and_the_decoder(bench, tmp_path):
    rows = bench.round_rows(_history([20.0, 10.0], 4.0), _history([40.0, 10.5], 5.0))
    msgs = bench.message_timeline("a", [], _events(0.0), _history([60.0, 30.0], 5.0))
    result = {
        "command": "python simulations/bench_deployment.py --n 24",
        "setting": "2 fundus sites",
        "machine": "x86_64, 2 cores",
        "rounds": rows,
        "goal": bench.goal_summary(rows),
        "simulation": {"total_s": 70.0},
        "deployment": {"total_s": 160.0},
        "decoder": {
            "params": 72,
            "rounds": [2, 2],
            "decoder_bit_equal": True,
            "max_abs_diff": 0.0,
            "first_differing_round": None,
        },  # fmt: skip
        "overhead": bench.overhead_summary({"a": msgs}),
        "round_breakdown": bench.round_breakdown({"a": msgs}, _history([60.0, 30.0], 5.0)),
        "messages": {"a": msgs},
        "overhead_proxy": {"error": "no site"},
        "note": "a note",
    }
    path = tmp_path / "out.md"
    bench.write_markdown(path, result)
    text = path.read_text()
    assert "`python simulations/bench_deployment.py --n 24`" in text.splitlines()[2]
    assert "| 2 | 10.0 | 10.5 | 1.05 |" in text
    assert "**met**" in text and "bit-equal **True**" in text
