"""Flower's deployment engine for real: a SuperLink and SuperNodes as processes on 127.0.0.1.

Bounded in time (every wait has a timeout) and every process is stopped by PID in a
``finally``, also when an assertion fails. Each test takes one to three minutes: a SuperNode
starts a fresh ClientApp process per message.
"""

from __future__ import annotations

import contextlib
import json
import re
import ssl
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest

from baps_fed.federation.checkpoint import load_checkpoint
from baps_fed.federation.contract import FedTrainConfig, initial_theta
from baps_fed.launch.certs import make_pilot_certs
from baps_fed.launch.deployment import CoordinatorSettings, run_coordinator
from baps_fed.launch.flower_cli import CONNECTION, flwr, write_connection
from baps_fed.launch.processes import ProcessGroup, free_port
from baps_fed.launch.site import SiteSettings, start_site
from baps_fed.launch.site_terminal import NOT_REGISTERED
from tests.launch.waiting import wait_for

PATIENT = "DOE_JOHN_19700101"  # a planted patient file name
RUN = {"local-steps": 1, "batch-size": 2, "sp-avg": 2, "eval-every": 2}


def _site(name: str, data: str, fm: str, port: int, folder: Path, **tls) -> SiteSettings:
    node_config = {"data": data, "site-name": name, "fm": fm, "n": 12, "seed": 1}
    return SiteSettings(f"127.0.0.1:{port}", node_config, folder / name, **tls)


def _run_in_thread(settings: CoordinatorSettings, group: ProcessGroup) -> tuple:
    result: dict = {}

    def target():
        try:
            result["status"] = run_coordinator(settings, group)
        except Exception as err:  # surfaced by the test below
            result["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, result


def _all_stopped(pids: list[int]) -> bool:
    return not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids)


@contextlib.contextmanager
def _processes():
    """The processes a test starts: all stopped by PID at the end, pass or fail; on a pass,
    also checked to be gone (children included)."""
    group = ProcessGroup()
    try:
        yield group
    except BaseException:
        group.stop()
        raise
    pids = group.pids()
    group.stop()
    assert _all_stopped(pids)


def _finished(thread: threading.Thread, result: dict, what: str) -> None:
    thread.join(timeout=420)
    assert not thread.is_alive(), what
    assert result.get("status") == 0, result


def _outsider_cannot_register_list_or_stop(home: Path, port: int, certs: Path) -> None:
    """Someone holding only ca.crt (every hospital has it) reaches the public port with
    Flower's own CLI: registering a key of its own, listing runs and stopping one all fail,
    because only the Fleet API is served there."""
    write_connection(home, f"127.0.0.1:{port}", certs / "ca.crt")
    own_key = certs / "nodes" / "intruder.pub"  # a key nobody registered
    for args in (["supernode", "register", str(own_key), CONNECTION], ["ls", CONNECTION],
                 ["stop", "1", CONNECTION]):  # fmt: skip
        done = flwr(home, args, timeout_s=60)
        assert done.returncode != 0, (args, done.stdout, done.stderr)
    context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    for path in ("/v1/control/list-runs", "/v1/control/stop-run", "/v1/runtime/pull-messages"):
        request = urllib.request.Request(f"https://127.0.0.1:{port}{path}", data=b"", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10, context=context)
        assert refused.value.code == 403


def test_tls_node_auth_two_rounds_and_an_unregistered_node_is_refused(tmp_path, fm_spec):
    certs = tmp_path / "certs"
    make_pilot_certs(certs, [], ["hospital-a", "hospital-b", "hospital-c", "intruder"])
    port = free_port()
    with _processes() as group:
        settings = CoordinatorSettings(
            folder=tmp_path / "coordinator", certs=certs,
            node_keys=[certs / "nodes" / f"hospital-{x}.pub" for x in "abc"],
            port=port, run_config={"rounds": 2, "min-sites": 2, "round-timeout": 240.0, **RUN},
        )  # fmt: skip
        thread, result = _run_in_thread(settings, group)
        # sites connect once their keys are registered (the run is submitted right after)
        wait_for(lambda: (settings.folder / "run_config.toml").exists(), 120, "registration")
        # hospital-c's data path names a patient and does not exist: every message fails there
        missing = str(tmp_path / "records" / PATIENT)
        for name, data in [("hospital-a", "fundus"), ("hospital-b", "ultrasound"),
                           ("hospital-c", missing)]:  # fmt: skip
            start_site(
                _site(name, data, fm_spec, port, tmp_path, ca_cert=certs / "ca.crt",
                      private_key=certs / "nodes" / name),
                group,
            )  # fmt: skip
        intruder = _site("intruder", "fundus", fm_spec, port, tmp_path, ca_cert=certs / "ca.crt",
                         private_key=certs / "nodes" / "intruder")  # fmt: skip
        start_site(intruder, group)
        _outsider_cannot_register_list_or_stop(tmp_path / "outsider", port, certs)
        _finished(thread, result, "the federated run did not finish within 7 minutes")

    state = load_checkpoint(tmp_path / "coordinator")
    assert state.round == 2
    assert not np.array_equal(state.theta, initial_theta(FedTrainConfig.from_flat(RUN)))
    history = json.loads((tmp_path / "coordinator" / "rounds.json").read_text())["history"]
    # round 1 may start before all three sites are connected (min-sites 2; hospital-c's error
    # replies do not count towards it), by round 2 they are
    for entry in history:
        assert set(entry["train"]) <= {"hospital-a", "hospital-b"}  # never the intruder
        for m in entry["train"].values():
            assert m["num-examples"] > 0 and m["fm-queries"] == 1 * 2 * 2 * 2
    assert set(history[1]["train"]) == {"hospital-a", "hospital-b"}
    assert set(history[1]["evaluate"]) == {"hospital-a", "hospital-b"}
    log = (tmp_path / "intruder" / "supernode.log").read_text()
    assert "intruder" not in json.dumps(history)
    assert NOT_REGISTERED in log, log[-3000:]  # the SuperLink refused the unregistered key
    superlink_log = (tmp_path / "coordinator" / "superlink.log").read_text()
    assert "No SuperNode found with the given public key" in superlink_log
    assert (tmp_path / "coordinator" / "gateway.log").is_file()
    # hospital-c's errors reached the coordinator as a kind and a reference, nothing more,
    # named by its name in one line (rounds.json, report.md), never by a Flower node id
    assert any("data: the site's data could not be read" in f for f in history[1]["failures"])
    assert any(f.startswith("train hospital-c: data: ") for f in history[1]["failures"])
    assert not re.search(r"node \d", json.dumps(history))
    report = (tmp_path / "coordinator" / "report.md").read_text()
    assert "- round 2, train hospital-c: data: the site's data could not be read" in report
    for path in (tmp_path / "coordinator").rglob("*"):
        if path.is_file():
            assert PATIENT.encode() not in path.read_bytes(), path


# A real SIGKILL mid-round, a minute of real processes: slow (`make test-all`, .ci/run). The
# default suite checks the same on the coordinator's logic in-process (test_flower_apps.py:
# test_a_silent_site_is_skipped_and_the_run_goes_on, test_failures_name_the_site_even_when_...).
@pytest.mark.slow
def test_a_killed_site_does_not_stop_the_run(tmp_path, fm_spec):
    port = free_port()
    with _processes() as group:
        start_site(_site("hospital-a", "fundus", fm_spec, port, tmp_path), group)
        doomed = start_site(_site("hospital-b", "ultrasound", fm_spec, port, tmp_path), group)
        settings = CoordinatorSettings(
            folder=tmp_path / "coordinator", certs=None, node_auth=False, port=port,
            run_config={"rounds": 2, "min-sites": 1, "round-timeout": 60.0, **RUN},
        )  # fmt: skip
        thread, result = _run_in_thread(settings, group)
        log_b = tmp_path / "hospital-b" / "supernode.log"
        wait_for(
            lambda: log_b.is_file() and "Receiving: train" in log_b.read_text(),
            240,
            "b receiving a train message",
        )
        group.stop_one(doomed)  # mid-round: b got its train message and dies
        _finished(thread, result, "the run stalled after a site died")
    history = json.loads((tmp_path / "coordinator" / "rounds.json").read_text())["history"]
    assert [e["round"] for e in history] == [1, 2]
    assert "hospital-a" in history[1]["train"] and "hospital-b" not in history[1]["train"]
    assert any(e["failures"] for e in history)
