"""``baps-fed simulate``'s private SuperLink answers this account only, and the simulation's
token is in a 0600 file, never on a command line.

A real simulate run (SuperLink behind ``coordinator/superlink.py``, its SuperExec, ``flwr
run`` and Flower's simulation process) on 127.0.0.1; a watcher thread records every process
the run starts and, while the simulation runs, calls the SuperLink's Control API as this
account and (as root) as another. The run stops every process it started by PID (its
``ProcessGroup``); the test checks none is left."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import psutil
import pytest

from baps_fed.cli import main
from baps_fed.fm.tiny import save_tiny_weights
from tests.conftest import SMALL_ARCH
from tests.launch.test_coordinator_access import NOBODY, _post, _post_as

CONTROL = ("/v1/control/list-runs", "/v1/control/stop-run")


def _private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


def _watch(stop: threading.Event, seen: dict[int, list[str]], found: dict) -> None:
    """Record every descendant's command line; once the simulation process runs, read its
    token file and call the SuperLink as this account and as another."""
    try:
        while not stop.is_set():
            for child in psutil.Process().children(recursive=True):
                try:
                    args = child.cmdline()
                except psutil.Error:
                    continue
                seen.setdefault(child.pid, args)
                if "coordinator.superlink" in args:
                    found["port"] = int(args[args.index("--port") + 1])
                simulation = any("flwr-simulation" in a for a in args)
                if simulation and "status" not in found and "--token-file" in args:
                    path = Path(args[args.index("--token-file") + 1])
                    found["token private"] = _private(path) and _private(path.parent)
                    found["token"] = path.read_text().strip()
                    port = found["port"]
                    found["status"] = {"own": _post(port, CONTROL[0], tls=False)}
                    if os.getuid() == 0:
                        found["status"]["other"] = [
                            _post_as(NOBODY, port, route, tls=False) for route in CONTROL
                        ]
            stop.wait(0.1)
    except Exception as err:  # surfaced by the test
        found["error"] = repr(err)


@pytest.mark.slow
def test_simulate_superlink_answers_this_account_only(tmp_path, small_sam):
    weights = tmp_path / "small.pt"
    save_tiny_weights(weights, small_sam, SMALL_ARCH, {})
    out = tmp_path / "run"
    args = ["simulate", "--fm", f"tiny:{weights}", "--n", "8", "--sites", "2", "--rounds", "1"]
    args += ["--local-steps", "1", "--out", str(out)]
    seen: dict[int, list[str]] = {}
    found: dict = {}
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(stop, seen, found), daemon=True)
    watcher.start()
    try:
        assert main(args) == 0
    finally:
        stop.set()
        watcher.join(timeout=60)
    assert "error" not in found, found["error"]
    assert "status" in found, "no flwr-simulation process with --token-file was seen"
    assert found["token private"] and found["status"]["own"] == 200, found
    if os.getuid() == 0:
        assert found["status"]["other"] == [403, 403]
        log = (out / "superlink.log").read_text()
        assert f"refused POST {CONTROL[1]} from 127.0.0.1:" in log
    for cmdline in seen.values():  # the token was never on a command line
        assert "--token" not in cmdline and found["token"] not in " ".join(cmdline)
    for path in [out, *out.rglob("*")]:  # the run folder and all in it: this account's only
        assert _private(path), f"{path}: mode {stat.S_IMODE(path.stat().st_mode):o}"
    left = {pid: " ".join(args)[:200] for pid, args in seen.items() if _alive(pid)}
    assert not left, left  # the run stopped all it started


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
