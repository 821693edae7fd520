"""``baps-fed site``: one hospital on Flower's deployment engine.

The site's process lives as long as the site: it loads the FM and decodes the data once,
serves the site's ClientApp to the relay that Flower's SuperNode starts for each message
(``baps_fed.federation.site_relay``), and runs the SuperNode. Its terminal says what the
operator needs: ready, connected, each round's result, the run's end, and every failure with
its cause and what to do (``site_terminal``); the full SuperNode log stays in its folder.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import tomli_w

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


def start_site(s: SiteSettings, group: ProcessGroup) -> subprocess.Popen:
    """Start the hospital's SuperNode in ``group``; returns its process."""
    s.folder.mkdir(parents=True, exist_ok=True)
    node_config = s.folder / "node_config.toml"
    node_config.write_text(tomli_w.dumps(s.node_config))
    cmd = [str(Path(sys.executable).parent / "flower-supernode"), "--superlink", s.superlink]
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
    env = flower_env(s.folder / "flwr_home")
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
) -> int:
    """Run the SuperNode until the run ends (``terminal.finished``, unless ``s.stay``) or the
    SuperNode does; while the coordinator has not registered this hospital's key (or is not up
    yet), restart it every ``retry_s`` seconds. The SuperNode log's news goes to the terminal."""
    terminal = terminal or SiteTerminal(s.name, s.superlink, tls=s.ca_cert is not None)
    log = s.folder / "supernode.log"
    while True:
        watcher = LogWatcher(log, terminal)
        proc = start_site(s, group)
        status = _watch(proc, watcher, terminal, s.stay)
        if status is None:  # the run ended and its coordinator has gone
            group.stop_one(proc)
            group.forget(proc)
            terminal.say("the run has ended; exiting (pass --stay to wait for the next run)")
            return 0
        if not watcher.not_registered:
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


def _watch(
    proc: subprocess.Popen, watcher: LogWatcher, terminal: SiteTerminal, stay: bool
) -> int | None:
    """The SuperNode's exit status, or None once the run has ended and its coordinator has
    gone (or ``_END_GRACE_S`` passed)."""
    ended_at: float | None = None
    while True:
        status = proc.poll()
        watcher.poll()
        if status is not None:
            return status
        if not stay and terminal.finished.is_set():
            if ended_at is None:
                ended_at, failures = time.monotonic(), watcher.failures
            if watcher.failures > failures or time.monotonic() - ended_at > _END_GRACE_S:
                return None
        time.sleep(0.25)


def run_site(s: SiteSettings, group: ProcessGroup) -> int:
    """The hospital's site: its ClientApp served from this process (FM and data built once,
    here), and its SuperNode relaying each message to it."""
    from baps_fed.federation.site_relay import WORKER_KEY, serve, socket_address

    terminal = SiteTerminal(s.name, s.superlink, tls=s.ca_cert is not None)
    if s.threads is not None:
        import torch

        torch.set_num_threads(s.threads)
    start = time.perf_counter()
    from sites.site_app import site_app, warm_up  # torch, the FM code

    try:
        site = warm_up(s.node_config)
    except Exception as err:  # a bad data path or FM spec: said here, before any round
        terminal.say(f"cannot start: {err}")
        return 2
    terminal.say(
        f"ready in {time.perf_counter() - start:.1f} s: {site.num_train} training cases "
        f"({s.node_config.get('data')}), FM {site.spec.fm}"
    )
    address = socket_address()
    server = serve(address, site_app, terminal.observe)
    try:
        return supervise_site(
            replace(s, node_config={**s.node_config, WORKER_KEY: address}), group,
            terminal=terminal,
        )  # fmt: skip
    finally:
        server.stop(grace=None)
        shutil.rmtree(Path(address.removeprefix("unix:")).parent, ignore_errors=True)
