"""``ProcessGroup.stop`` ends what its processes started, even what their own children left
behind: a SuperExec (``become_subreaper``) keeps the orphans of its tasks in its tree, as Ray's
workers are when ``flwr-simulation`` exits before them."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import psutil
import pytest

from baps_fed.launch.processes import ProcessGroup

# A stand-in for the SuperExec: (maybe) a subreaper, it starts a task that starts a long-lived
# worker and exits at once, orphaning it; then it idles until stopped.
LAUNCHER = """
import pathlib, subprocess, sys, time
from baps_fed.launch.processes import become_subreaper
if sys.argv[1] == "subreaper":
    become_subreaper(own=set, every_s=0.2)
task = "import subprocess, sys; quiet = subprocess.DEVNULL; p = subprocess.Popen("
task += "[sys.executable, '-c', 'import time; time.sleep(120)'], stdout=quiet, stderr=quiet)"
task += "; print(p.pid)"
out = subprocess.run([sys.executable, "-c", task], capture_output=True, text=True, check=True)
pathlib.Path(sys.argv[2]).write_text(out.stdout)
time.sleep(120)
"""


def _orphan_of(mode: str, tmp_path: Path) -> tuple[ProcessGroup, psutil.Process]:
    pid_file = tmp_path / f"{mode}.pid"
    group = ProcessGroup()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    group.start("launcher", [sys.executable, "-c", LAUNCHER, mode, str(pid_file)], env)
    deadline = time.monotonic() + 60
    while not (pid_file.is_file() and pid_file.read_text().strip()):
        assert time.monotonic() < deadline, "the launcher did not start its task"
        time.sleep(0.1)
    return group, psutil.Process(int(pid_file.read_text()))


def _kill(proc: psutil.Process) -> None:
    try:
        proc.kill()
    except psutil.NoSuchProcess:
        pass


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_a_subreapers_orphans_are_stopped_with_it(tmp_path):
    group, orphan = _orphan_of("subreaper", tmp_path)
    try:
        assert orphan.ppid() == group.procs[0][1].pid  # re-parented to the launcher
        group.stop()
        orphan.wait(timeout=5)  # raises if it is still running
    finally:
        _kill(orphan)
        group.stop()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_an_adopted_orphan_that_ends_is_collected_not_left_a_zombie(tmp_path):
    group, orphan = _orphan_of("subreaper", tmp_path)
    pid = orphan.pid
    try:
        orphan.kill()
        deadline = time.monotonic() + 10
        while psutil.pid_exists(pid):
            assert time.monotonic() < deadline, f"{pid}: {psutil.Process(pid).status()}"
            time.sleep(0.1)
    finally:
        group.stop()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_without_it_the_orphan_escapes_the_group(tmp_path):
    """The case the subreaper is for: the orphan leaves the tree, stop() cannot see it."""
    group, orphan = _orphan_of("plain", tmp_path)
    try:
        assert orphan.ppid() != group.procs[0][1].pid
        group.stop()
        assert orphan.is_running() and orphan.status() != psutil.STATUS_ZOMBIE
    finally:
        _kill(orphan)
        group.stop()
