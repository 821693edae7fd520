"""Kill and restart on Flower's deployment engine, for real (TLS, node authentication): the
coordinator SIGKILLed after round 1 and started again with the same command plus --resume, and
one hospital's SuperNode killed and restarted, still reach the uninterrupted run's decoder bit
for bit; the restarted site continues its SPSA step count.

Slow (two federated runs, about six minutes on 2 cores): ``make test-all`` or ``pytest -m slow``.
Every process is stopped by PID at the end, pass or fail."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from baps_fed.federation.checkpoint import load_checkpoint
from baps_fed.launch.certs import make_pilot_certs
from baps_fed.launch.processes import ProcessGroup, free_port
from baps_fed.launch.site import SiteSettings, start_site, supervise_site
from tests.launch.waiting import wait_for

pytestmark = pytest.mark.slow
SITES = [("hospital-a", "fundus"), ("hospital-b", "ultrasound")]
HEARTBEAT_EXPIRY_S = 70.0


def _rounds_done(folder: Path) -> int:
    try:
        return len(json.loads((folder / "rounds.json").read_text())["history"])
    except (OSError, ValueError, KeyError):
        return 0


class _Pilot:
    """A coordinator process and two hospitals' SuperNodes, all stopped by PID at the end."""

    def __init__(self, root: Path, certs: Path, fm: str) -> None:
        self.root, self.certs, self.fm, self.port = root, certs, fm, free_port()
        root.mkdir(parents=True)
        self.group = ProcessGroup()
        self.coordinators: list[subprocess.Popen] = []

    def coordinator(self, resume: bool = False) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "baps_fed.cli", "coordinator", "--out", str(self.root / "c")]
        cmd += ["--certs", str(self.certs), "--port", str(self.port), "--rounds", "3"]
        cmd += ["--min-sites", "2", "--local-steps", "1", "--round-timeout", "240"]
        cmd += ["--register", *[str(self.certs / "nodes" / f"{n}.pub") for n, _ in SITES]]
        cmd += ["--config", "batch-size=2", "sp-avg=2"] + (["--resume"] if resume else [])
        log = open(self.root / f"coordinator-{len(self.coordinators)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.coordinators.append(proc)
        return proc

    def _settings(self, name: str, data: str) -> SiteSettings:
        node_config = {"data": data, "site-name": name, "fm": self.fm, "n": 12, "seed": 1,
                       "state-dir": str(self.root / name / "state")}  # fmt: skip
        return SiteSettings(
            f"127.0.0.1:{self.port}", node_config, self.root / name,
            ca_cert=self.certs / "ca.crt", private_key=self.certs / "nodes" / name,
        )  # fmt: skip

    def site(self, name: str, data: str) -> subprocess.Popen:
        return start_site(self._settings(name, data), self.group)

    def restarted_site(self, name: str, data: str) -> None:
        """As `baps-fed site` restarts: it retries until the SuperLink lets the node in again
        (the killed one's heartbeat must expire first)."""
        settings = self._settings(name, data)
        threading.Thread(
            target=supervise_site, args=(settings, self.group, 5.0), daemon=True
        ).start()

    def stop(self) -> None:
        for proc in self.coordinators:
            if proc.poll() is None:
                for child in psutil.Process(proc.pid).children(recursive=True):
                    child.kill()
                proc.kill()
                proc.wait(timeout=10)
        self.group.stop()


def _run(root: Path, certs: Path, fm: str, interrupt: bool) -> np.ndarray:
    pilot = _Pilot(root, certs, fm)
    try:
        first = pilot.coordinator()
        wait_for(lambda: (root / "c" / "run_config.toml").is_file(), 120, "the coordinator")
        sites = {name: pilot.site(name, data) for name, data in SITES}
        if interrupt:
            wait_for(lambda: _rounds_done(root / "c") >= 1, 300, "round 1")
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            pilot.group.stop_one(sites["hospital-b"])  # and one hospital's SuperNode too
            pilot.group.forget(sites["hospital-b"])
            # the SuperLink remembers the killed node until its heartbeat expires (2 x 30 s);
            # a hospital that comes back sooner is let in only after that, and misses a round
            time.sleep(HEARTBEAT_EXPIRY_S)
            resumed = pilot.coordinator(resume=True)  # the same command, plus --resume
            log = root / "coordinator-1.log"
            wait_for(lambda: b"Successfully started run" in log.read_bytes(), 120, "the resume")
            pilot.restarted_site("hospital-b", "ultrasound")  # the hospital restarts its site
            assert resumed.wait(timeout=420) == 0
        else:
            assert first.wait(timeout=420) == 0
        return load_checkpoint(root / "c").theta
    finally:
        pilot.stop()


def test_killed_coordinator_and_site_resume_to_the_uninterrupted_decoder(tmp_path, fm_spec):
    certs = tmp_path / "certs"
    make_pilot_certs(certs, [], [name for name, _ in SITES])
    whole = _run(tmp_path / "whole", certs, fm_spec, interrupt=False)
    resumed = _run(tmp_path / "cut", certs, fm_spec, interrupt=True)
    np.testing.assert_array_equal(resumed, whole)
    history = json.loads((tmp_path / "cut" / "c" / "rounds.json").read_text())["history"]
    assert [e["round"] for e in history] == [1, 2, 3]
    assert history[1]["train"]["hospital-b"]["spsa-step"] == 1  # it went on, not from 0
