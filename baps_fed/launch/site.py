"""``baps-fed site``: one hospital on Flower's deployment engine.

Two processes: the site's own (``sites/worker.py``), which loads the FM and decodes the data
once and serves the site's ClientApp for as long as the site runs, and the SuperNode, whose
per-message ClientApp relays each message to it (``sites/relay.py``; the address is a private
Unix socket, ``worker_address``). The terminal says what the operator needs: ready, connected,
each round's result, the run's end, and every failure with its cause and what to do
(``site_terminal``); the full SuperNode log stays in the site's folder.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import tomli_w

from baps_fed.federation.worker_address import (
    WORKER_KEY,
    finished_marker,
    private_socket_address,
    socket_path,
)
from baps_fed.launch.flower_cli import TOKEN_DIR_ENV
from baps_fed.launch.private_files import private_dir, write_private
from baps_fed.launch.processes import ProcessGroup, flower_env, free_port
from baps_fed.launch.site_terminal import LogWatcher, SiteTerminal

SUPEREXEC_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"  # seconds (Flower 1.42)


@dataclass
class SiteSettings:
    superlink: str  # host:port of the coordinator's SuperLink
    node_config: dict  # data, site-name, fm, n, seed, scanner, layout
    folder: Path  # logs and the node-config file
    ca_cert: Path | None = None  # None = --insecure
    private_key: Path | None = None  # the hospital's node key (node authentication)
    port: int = 0  # the SuperNode's local API port (0: a free one)
    threads: int | None = None  # torch threads of the site's computation (None: torch's)
    stay: bool = False  # after a run ends, wait for the next one instead of exiting

    @property
    def name(self) -> str:
        return str(self.node_config.get("site-name", "site"))


def check_site_files(ca_cert: Path | None, private_key: Path | None) -> None:
    """``--ca`` is a readable file of PEM certificates (as Flower's SuperNode loads it) and
    ``--key`` a readable file: said in one line before anything loads, not after the FM and
    the data (a CA that is no certificate left the SuperNode hanging silently)."""
    if ca_cert is not None:
        data = _readable(ca_cert, "--ca", "the coordinator's CA certificate (ca.crt)")
        try:
            ssl.create_default_context().load_verify_locations(cadata=data.decode("ascii"))
        except (ssl.SSLError, UnicodeDecodeError, ValueError) as err:
            # OpenSSL's reason, e.g. "no start line: cadata does not contain a certificate"
            why = str(err).split(" (_ssl.c")[0] if isinstance(err, ssl.SSLError) else "not text"
            raise ValueError(
                f"--ca {ca_cert}: not a PEM certificate ({why}): give the coordinator's ca.crt "
                "(made by baps-fed certs)"
            ) from None
    if private_key is not None:
        _readable(private_key, "--key", "this hospital's private node key (nodes/NAME)")


def _readable(path: Path, flag: str, what: str) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"{flag} {path}: no such file; give {what}")
    try:
        return path.read_bytes()
    except OSError as err:
        raise OSError(f"{flag} {path}: cannot be read ({err.strerror}); give {what}") from None


def start_site(s: SiteSettings, group: ProcessGroup) -> subprocess.Popen:
    """Start the hospital's SuperNode in ``group``; returns its process. Its folder, node
    config (it names the data) and log are this account's only; its local API answers this
    account only and its ClientApps read their tokens from 0600 files (``sites/supernode.py``)."""
    private_dir(s.folder)
    node_config = write_private(s.folder / "node_config.toml", tomli_w.dumps(s.node_config))
    cmd = [sys.executable, "-m", "sites.supernode", "--isolation", "process"]
    cmd += ["--superlink", s.superlink]
    if s.ca_cert is None:
        cmd.append("--insecure")
    else:
        if not s.ca_cert.is_file():
            raise FileNotFoundError(f"{s.ca_cert}: the coordinator's CA certificate is missing")
        cmd += ["--root-certificates", str(s.ca_cert)]
    if s.private_key is not None:
        if not s.private_key.is_file():
            raise FileNotFoundError(f"{s.private_key}: this hospital's node key is missing")
        cmd += ["--auth-supernode-private-key", str(s.private_key)]
    cmd += ["--node-config", str(node_config), "--port", str(s.port or free_port())]
    env = {
        **flower_env(s.folder / "flwr_home"),
        TOKEN_DIR_ENV: str(private_dir(s.folder / "tokens")),
    }
    # Flower's SuperExec looks for a message to start a ClientApp for once a second by default
    env.setdefault(SUPEREXEC_POLL_ENV, "0.1")
    return group.start(
        f"supernode {s.node_config.get('site-name', '')}", cmd, env, s.folder / "supernode.log"
    )


def supervise_site(
    s: SiteSettings,
    group: ProcessGroup,
    retry_s: float = 15.0,
    terminal: SiteTerminal | None = None,
    worker: subprocess.Popen | None = None,
) -> int:
    """Run the SuperNode until the run ends (the site's process ``worker`` marks it once it
    has seen the last round; ``s.stay``: never) or the SuperNode does; while the coordinator
    has not registered this hospital's key (or is not up yet), restart it every ``retry_s``
    seconds. The SuperNode log's news goes to the terminal."""
    terminal = terminal or SiteTerminal(s.name, s.superlink, tls=s.ca_cert is not None)
    log = s.folder / "supernode.log"
    while True:
        watcher = LogWatcher(log, terminal)
        proc = start_site(s, group)
        address = s.node_config.get(WORKER_KEY)
        marker = finished_marker(address) if address else None
        status = _watch(proc, watcher, terminal, s.stay, worker, marker)
        if status == _WORKER_FAILED:
            group.stop_one(proc)
            group.forget(proc)
            terminal.say(f"its own process stopped (exit status {worker.returncode}); exiting")
            return worker.returncode or 1
        if status is None:  # the run ended and its coordinator has gone
            group.stop_one(proc)
            group.forget(proc)
            terminal.say("the run has ended; exiting (pass --stay to wait for the next run)")
            return 0
        if status == _SUPERNODE_FAILED:  # it has given up but its process lingers
            group.stop_one(proc)
            group.forget(proc)
            if not watcher.not_registered:
                terminal.say(f"its SuperNode failed and hung, so it was stopped: {watcher.tail()}")
                return 1
        elif not watcher.not_registered:
            terminal.supernode_ended(status, watcher.tail())
            return status
        terminal.say(
            "the coordinator refused this node (its key is not registered yet?); retrying "
            f"in {retry_s:.0f} s"
        )
        group.forget(proc)
        time.sleep(retry_s)


# once its run has ended, the longest a site waits for the coordinator to go: leaving earlier
# could lose the last reply (the SuperLink answers the ServerApp "node offline" for a reply
# it has not yet collected from a node that has left)
_END_GRACE_S = 120.0


_WORKER_FAILED = -1000  # _watch: the site's own process ended with an error
_SUPERNODE_FAILED = -1001  # _watch: the SuperNode's log says it has failed, yet it runs on
_HANG_GRACE_S = 10.0  # how long a SuperNode that has failed may take to exit by itself


def _watch(
    proc: subprocess.Popen,
    watcher: LogWatcher,
    terminal: SiteTerminal,
    stay: bool,
    worker: subprocess.Popen | None,
    marker: Path | None,
) -> int | None:
    """The SuperNode's exit status, ``_WORKER_FAILED``, ``_SUPERNODE_FAILED`` (Flower's
    SuperNode can fail, an SSL error say, and hang instead of exiting), or None once the run
    has ended (the site's process wrote ``marker``) and its coordinator has gone (or
    ``_END_GRACE_S`` passed)."""
    ended_at = failed_at = None
    while True:
        if marker is not None and marker.exists():
            terminal.finished.set()  # before the log's news: the coordinator may go at once
        status = proc.poll()
        watcher.poll()
        if status is not None:
            return status
        if watcher.failed:
            failed_at = failed_at or time.monotonic()
            if time.monotonic() - failed_at > _HANG_GRACE_S:
                return _SUPERNODE_FAILED
        if worker is not None and worker.poll() is not None and not terminal.finished.is_set():
            return _WORKER_FAILED  # it ended before its run did
        if not stay and terminal.finished.is_set():
            if ended_at is None:
                ended_at, failures = time.monotonic(), watcher.failures
            if watcher.failures > failures or time.monotonic() - ended_at > _END_GRACE_S:
                return None
        time.sleep(0.25)


WORKER_START_S = 1800.0  # the longest the site's process may take to load its FM and data


def run_site(s: SiteSettings, group: ProcessGroup) -> int:
    """The hospital's site: its own process (FM and data built once, there) and its
    SuperNode, whose per-message ClientApp relays to it."""
    terminal = SiteTerminal(s.name, s.superlink, tls=s.ca_cert is not None)
    private_dir(s.folder)
    node_config = write_private(s.folder / "site_config.toml", tomli_w.dumps(s.node_config))
    address = private_socket_address()
    cmd = [sys.executable, "-m", "sites.worker", "--node-config", str(node_config),
           "--address", address]  # fmt: skip
    if s.threads is not None:
        cmd += ["--threads", str(s.threads)]
    try:
        worker = group.start(f"site {s.name}", cmd, dict(os.environ), log=None, inherit=True)
        deadline = time.monotonic() + WORKER_START_S
        while not socket_path(address).exists():  # it listens once its site is built
            if worker.poll() is not None:
                return worker.returncode  # it said why (a bad data path, a bad FM spec)
            if time.monotonic() > deadline:
                raise TimeoutError(f"the site's process was not ready in {WORKER_START_S:.0f} s")
            time.sleep(0.2)
        settings = replace(s, node_config={**s.node_config, WORKER_KEY: address})
        return supervise_site(settings, group, terminal=terminal, worker=worker)
    finally:
        group.stop()
        shutil.rmtree(socket_path(address).parent, ignore_errors=True)
