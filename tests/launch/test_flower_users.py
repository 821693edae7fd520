"""What a Flower user meets with Flower's own ``flwr run`` (the pyproject's app, its run config
overridden with ``--run-config``) on a simulation SuperLink, as ``flwr run .`` starts one:
a bad key or value is named in one line, and the defaults run a synthetic federation.

Real processes on 127.0.0.1, bounded in time (a thread joined with a timeout); every process
is stopped by PID at the end, also when an assertion fails.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from baps_fed.launch.flower_cli import flwr_run, start_superlink, write_connection
from baps_fed.launch.processes import ProcessGroup, free_port
from tests.launch.test_deployment import _processes

TWO_SITES = "num-supernodes=2 client-resources-num-cpus=1 client-resources-num-gpus=0"


def _simulation_superlink(group: ProcessGroup, folder: Path) -> Path:
    """A simulation SuperLink in ``folder``; returns its FLWR_HOME (the connection in it)."""
    home, port = folder / "flwr_home", free_port()
    write_connection(home, f"127.0.0.1:{port}", ca_cert=None)
    start_superlink(group, home, port, folder / "superlink.log", simulation=True, database=None)
    return home


def _submit(group, home: Path, folder: Path, run_config: dict, timeout_s: float) -> int:
    """``flwr run`` (Flower's CLI) with these overrides, to its end or ``timeout_s``; its
    log in ``folder``, the SuperLink's next to FLWR_HOME."""
    result: dict = {}

    def target():
        try:
            result["status"] = flwr_run(
                group, home, run_config, folder / "run.log", TWO_SITES,
                superlink_log=home.parent / "superlink.log",
            )  # fmt: skip
        except Exception as err:  # surfaced below
            result["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout=timeout_s)
    assert not thread.is_alive(), f"flwr run did not end within {timeout_s:.0f} s"
    assert "error" not in result, result
    return result["status"]


def test_a_bad_run_config_is_named_in_one_line(tmp_path, capsys):
    """A value of the wrong type reaches the ServerApp (Flower checks keys, not types): it
    refuses in one line, before any round. A misspelt key is refused by the SuperLink, whose
    CLI answer names no key: the launcher names it, with the closest valid key."""
    with _processes() as group:
        home = _simulation_superlink(group, tmp_path)
        wrong_type = tmp_path / "wrong-type"
        wrong_type.mkdir()
        out = wrong_type / "run"
        status = _submit(group, home, wrong_type, {"local-steps": "abc", "out-dir": str(out)}, 240)
        assert status == 1  # a failed run (Flower's CLI itself exits 0 here)
        misspelt = tmp_path / "misspelt"
        misspelt.mkdir()
        assert _submit(group, home, misspelt, {"locl-steps": 3}, 120) != 0
    shown = capsys.readouterr().out
    log = (wrong_type / "run.log").read_text()
    refusal = "baps-fed coordinator: refused the run: config local-steps: expected int, got 'abc'"
    assert refusal in shown and refusal in log
    assert "Traceback" not in log and log.count(refusal) == 1, log[-3000:]
    assert "round 1" not in log and not out.exists()
    said = "the SuperLink refused the run config: unknown key 'locl-steps'; did you mean "
    assert f"{said}'local-steps'?" in shown


@pytest.mark.slow
def test_flwr_run_with_the_pyproject_defaults_runs_the_default_sites(tmp_path, capsys):
    """``flwr run .`` with Flower's default simulation (2 SuperNodes) and no ``sites``: the
    default scenario's first two sites train and are named (1 round of 1 step here)."""
    out = tmp_path / "run"
    with _processes() as group:
        home = _simulation_superlink(group, tmp_path)
        config = {"rounds": 1, "local-steps": 1, "out-dir": str(out)}
        assert _submit(group, home, tmp_path, config, 420) == 0
    shown = capsys.readouterr().out
    history = json.loads((out / "rounds.json").read_text())["history"]
    assert set(history[0]["train"]) == {"dermoscopy-a", "colonoscopy-b"}
    assert history[0]["failures"] == []
    assert f"done after round 1; report: {out / 'report.md'}" in shown
