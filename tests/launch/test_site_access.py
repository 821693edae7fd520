"""Who may reach a hospital's SuperNode's local Runtime API, and where its tokens are.

Real processes on 127.0.0.1 (``baps-fed site``'s SuperNode, ``sites/supernode.py``, and its
SuperExec; for the slow test also a coordinator with TLS and a run): another local account's
requests to the SuperNode's local API are refused (403) and logged with the peer, this
account's unsigned task acquisition is refused by Flower's SuperExec secret (401), and no
process ever has a token on its command line. Every process is stopped by PID, pass or fail;
every wait is bounded."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import psutil
import pytest

from baps_fed.launch.certs import make_pilot_certs
from baps_fed.launch.deployment import CoordinatorSettings, run_coordinator
from baps_fed.launch.processes import ProcessGroup, free_port, wait_http_ok
from baps_fed.launch.site import SiteSettings, start_site
from tests.launch.test_coordinator_access import NOBODY, _post, _post_as
from tests.launch.waiting import wait_for

# what another account would call: take the ClientApp's task (and its token), read the
# coordinator's message, send a reply in the site's name
ATTACKS = ("/v1/runtime/acquire-task", "/v1/runtime/pull-messages", "/v1/runtime/push-messages")


def _private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


def _cmdlines(group: ProcessGroup) -> dict[int, list[str]]:
    """Every live process of the group (children included) and its command line."""
    found = {}
    for pid in group.pids():
        try:
            found[pid] = psutil.Process(pid).cmdline()
        except psutil.NoSuchProcess:
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _others_are_refused(port: int, log: Path) -> None:
    """Another account (root only can switch to one): 403 on every Runtime route, each
    refusal a line in the SuperNode's log naming the peer and its account."""
    if os.getuid() != 0:
        return
    for path in ATTACKS:
        assert _post_as(NOBODY, port, path, tls=False) == 403, path
    text = log.read_text()
    for path in ATTACKS:
        assert f"refused POST {path} from 127.0.0.1:" in text
    assert f"(account {NOBODY}, not the site's 0): 403" in text


def test_the_site_supernode_answers_its_own_account_only(tmp_path):
    """The SuperNode alone (its SuperLink need not be up: its local API and SuperExec start
    before it connects)."""
    folder = tmp_path / "hospital-a"
    port = free_port()
    settings = SiteSettings(
        f"127.0.0.1:{free_port()}", {"site-name": "hospital-a"}, folder, port=port
    )
    group = ProcessGroup()
    try:
        proc = start_site(settings, group)
        wait_http_ok(f"http://127.0.0.1:{port}/health", proc, 60, folder / "supernode.log")
        # this account unsigned: Flower's SuperExec secret is on (process isolation) and refuses
        assert _post(port, "/v1/runtime/acquire-task", tls=False) == 401
        _others_are_refused(port, folder / "supernode.log")

        def superexec() -> list[str] | None:
            return next(
                (a for a in _cmdlines(group).values() if "coordinator.superexec" in a), None
            )

        wait_for(lambda: superexec() is not None, 60, "the SuperNode's SuperExec")
        args = superexec()
        secret = Path(args[args.index("--superexec-auth-secret-file") + 1])
        assert _private(secret) and _private(secret.parent) and secret.parent == folder / "tokens"
        started = _cmdlines(group)
        assert len(started) >= 2 and not any("--token" in a for a in started.values())
    finally:
        group.stop()
    assert not any(_alive(pid) for pid in started)  # the SuperExec went with its SuperNode


@pytest.mark.slow
def test_a_sites_clientapps_get_their_tokens_in_files_during_a_real_run(tmp_path, fm_spec):
    """A coordinator (TLS, node authentication) and one site run a round: each ClientApp's
    token is in a 0600 file, never in a command line; other accounts are refused meanwhile;
    the run completes through the guarded API."""
    certs = tmp_path / "certs"
    make_pilot_certs(certs, [], ["hospital-a"])
    coordinator = CoordinatorSettings(
        folder=tmp_path / "coordinator", certs=certs, node_keys=[certs / "nodes/hospital-a.pub"],
        port=free_port(), run_config={"rounds": 1, "min-sites": 1, "round-timeout": 240.0,
                                      "local-steps": 1, "batch-size": 2, "sp-avg": 2},
    )  # fmt: skip
    node_config = {"data": "fundus", "site-name": "hospital-a", "fm": fm_spec, "n": 8, "seed": 1}
    site_port = free_port()
    site = SiteSettings(
        f"127.0.0.1:{coordinator.port}", node_config, tmp_path / "hospital-a",
        ca_cert=certs / "ca.crt", private_key=certs / "nodes/hospital-a", port=site_port,
    )  # fmt: skip
    group = ProcessGroup()
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(s=run_coordinator(coordinator, group)))
    thread.daemon = True
    seen: dict[int, list[str]] = {}  # every process of the run and its command line
    tokens: dict[Path, str] = {}  # each ClientApp's token file and the token in it
    attacked = False
    try:
        thread.start()
        wait_for(lambda: (coordinator.folder / "run_config.toml").exists(), 180, "registration")
        start_site(site, group)
        while thread.is_alive():  # watch every process the run starts, until it ends
            for pid, args in _cmdlines(group).items():
                seen.setdefault(pid, args)
                if any("flwr-clientapp" in a for a in args) and "--token-file" in args:
                    path = Path(args[args.index("--token-file") + 1])
                    if path not in tokens and path.exists():
                        assert _private(path) and _private(path.parent)
                        tokens[path] = path.read_text().strip()
            if tokens and not attacked:  # while the run is on
                attacked = True
                _others_are_refused(site_port, site.folder / "supernode.log")
            thread.join(timeout=0.1)
            assert len(seen) < 10_000, "runaway processes"
        assert result.get("s") == 0, result
    finally:
        group.stop()
        thread.join(timeout=60)
    clientapps = [a for a in seen.values() if any("flwr-clientapp" in x for x in a)]
    assert clientapps and tokens  # the site ran its ClientApps, each with a token file
    for args in seen.values():
        assert "--token" not in args
        assert not any(token in " ".join(args) for token in tokens.values())
    assert not list((site.folder / "tokens").glob("*.token"))  # removed once each ended
