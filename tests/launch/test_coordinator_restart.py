"""A coordinator killed with SIGKILL leaves no process behind, and a second coordinator on a
port that is still served is refused instead of taking the other's answers for its own.

Real processes on 127.0.0.1, bounded in time; every process is stopped by PID at the end."""

from __future__ import annotations

import signal
import subprocess
import sys

import psutil

from baps_fed.launch.processes import free_port
from tests.launch.waiting import wait_for


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def _coordinator(out, port: int) -> list[str]:
    return [
        sys.executable, "-m", "baps_fed.cli", "coordinator", "--insecure", "--no-node-auth",
        "--out", str(out), "--port", str(port), "--rounds", "1", "--min-sites", "1",
    ]  # fmt: skip


def test_a_sigkilled_coordinator_leaves_no_process_and_a_served_port_is_refused(tmp_path):
    port, out = free_port(), tmp_path / "coordinator"
    log = open(tmp_path / "coordinator.log", "wb")  # noqa: SIM115
    first = subprocess.Popen(_coordinator(out, port), stdout=log, stderr=subprocess.STDOUT)
    started: list[psutil.Process] = []
    try:
        # the run is submitted (it then waits for sites): SuperLink, gateway, flwr run are up
        wait_for(lambda: (out / "run_config.toml").is_file(), 120, "the coordinator's start")
        wait_for(lambda: len(psutil.Process(first.pid).children()) >= 3, 30, "its processes")
        started = psutil.Process(first.pid).children(recursive=True)

        second = subprocess.run(
            _coordinator(tmp_path / "second", port), capture_output=True, text=True, timeout=120
        )
        assert second.returncode == 2
        assert f"127.0.0.1:{port} is already in use" in second.stderr

        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        wait_for(lambda: not _alive(started), 60, "every process it started to stop")
    finally:
        log.close()
        if first.poll() is None:
            first.kill()
            first.wait(timeout=10)
        for p in _alive(started):
            p.kill()


def test_a_damaged_checkpoint_is_refused_before_anything_starts(tmp_path):
    """``--resume`` from a truncated checkpoint, or one whose decoder holds NaN: one line,
    exit 2, before the SuperLink or ``flwr run`` start: run.log and superlink.db untouched."""
    import numpy as np

    from baps_fed.federation.checkpoint import CHECKPOINT, CoordinatorState, save_checkpoint

    theta = np.zeros(72, np.float32)
    for name, damage, said in [
        ("truncated", lambda b: b[: len(b) // 2], "not a readable coordinator checkpoint"),
        ("nan", None, "the checkpoint's decoder holds 3 non-finite values"),
    ]:
        out = tmp_path / name
        state = CoordinatorState(1, theta.copy(), {}, [], {})
        if damage is None:
            state.theta[:3] = np.nan
        path = save_checkpoint(out, state)
        if damage is not None:
            path.write_bytes(damage(path.read_bytes()))
        (out / "run.log").write_text("round 1 ...\n")
        (out / "superlink.db").write_bytes(b"the run's state")
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        done = subprocess.run(
            [*_coordinator(out, free_port()), "--resume"], capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert done.returncode == 2, done
        assert done.stderr.strip().count("\n") == 0, done.stderr  # one line
        assert f"{out / CHECKPOINT}: {said}" in done.stderr
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing appended
        assert "Fleet API on" not in done.stdout  # no SuperLink, no gateway, no flwr run
