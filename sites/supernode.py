"""Flower's SuperNode for ``baps-fed site``: its local Runtime API answers the site's own
account only, and each ClientApp gets its token in a file.

Flower 1.42's SuperNode serves a Runtime (ClientAppIo) HTTP API on a loopback port for its
SuperExec and ClientApps, and asks no caller who it is: in its default ``subprocess``
isolation it ignores the SuperExec secret, and its SuperExec starts each ClientApp as
``flwr-clientapp --token TOKEN``, visible in ``ps``. So any local account could acquire the
site's ClientApp tasks (with their tokens), pull the coordinator's messages and push a forged
reply in the site's name. This is ``flower-supernode`` (its own arguments, parsed by Flower)
with three changes:

- the Runtime API is served behind ``SameAccountOnly`` (``baps_fed/launch/peer_account.py``):
  403, and a log line naming the peer and its account, to every other account's socket;
- it runs in ``process`` isolation with a fresh SuperExec secret made here (0600), so Flower
  also checks the signature on every task acquisition;
- it starts the SuperExec itself, as Flower's ``subprocess`` isolation does (it ends with this
  process, ``--parent-pid``), but ``coordinator/superexec.py``'s, which hands each ClientApp
  its token in a 0600 file in ``BAPS_FED_TOKEN_DIR`` (a 0700 folder) instead of argv.

Started by ``baps_fed/launch/site.py`` as ``python -m sites.supernode --isolation process``.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
import threading
from dataclasses import replace
from logging import DEBUG, INFO, WARN
from pathlib import Path
from time import sleep

import uvicorn
from flwr.common.constant import ISOLATION_MODE_PROCESS
from flwr.supercore import log
from flwr.supercore.address import resolve_bind_address
from flwr.supercore.constant import HTTP_SERVER_SHUTDOWN_TIMEOUT
from flwr.supercore.exit import add_exit_handler
from flwr.supercore.logger import console_handler
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.tls import get_client_tls_args
from flwr.supernode.cli.flower_supernode import (
    SuperNodeLifespanConfig,
    _parse_supernode_lifespan_config,
)
from flwr.supernode.main import create_app
from flwr.supernode.nodestate import NodeStateFactory
from flwr.supernode.start_client_internal import start_client_internal

from baps_fed.launch.flower_cli import TOKEN_DIR_ENV
from baps_fed.launch.peer_account import SameAccountOnly
from baps_fed.launch.peer_account import log as access_log
from baps_fed.launch.private_files import PRIVATE_UMASK, write_private

REFUSED = (
    b"this SuperNode's local API answers only the site's own account: its SuperExec and "
    b"ClientApps\n"
)


def serve_runtime_api(
    config: SuperNodeLifespanConfig, state_factory: NodeStateFactory
) -> tuple[uvicorn.Server, threading.Thread]:
    """Flower's SuperNode Runtime API (as its ``_start_supernode_http_api``) behind the
    same-account guard, in a thread; returns once it listens."""
    app = create_app(
        state_factory=state_factory, superexec_auth_secret=config.superexec_auth_secret
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app=SameAccountOnly(app, owner="the site's", refusal=REFUSED),
            host=config.host,
            port=config.port,
            reload=False,
            access_log=console_handler.level <= DEBUG,
            ssl_certfile=config.runtime_ssl_certfile,
            ssl_keyfile=config.runtime_ssl_keyfile,
            workers=1,
        )
    )
    thread = threading.Thread(target=server.run, name="supernode-runtime-http-api")
    thread.start()
    while thread.is_alive() and not server.started:
        sleep(0.1)
    if not server.started:
        raise SystemExit("the SuperNode's Runtime API did not start (is --port in use?)")
    return server, thread


def start_superexec(config: SuperNodeLifespanConfig, secret: Path) -> subprocess.Popen:
    """The SuperExec that starts each ClientApp (token in a file), signing with ``secret``;
    it exits when this process does."""
    cmd = [sys.executable, "-m", "coordinator.superexec"]
    cmd += get_client_tls_args(
        insecure=config.runtime_certificates is None,
        root_certificates_path=config.runtime_root_certificates_path,
    )
    cmd += ["--runtime-api-address", resolve_bind_address(_runtime_address(config))]
    cmd += ["--superexec-auth-secret-file", str(secret), "--parent-pid", str(os.getpid())]
    if config.runtime_dependency_install:
        cmd.append("--allow-runtime-dependency-installation")
    # no preexec_fn (the API's thread runs already): --parent-pid ends it with this process
    return subprocess.Popen(cmd, umask=PRIVATE_UMASK)  # its output joins this one's log


def _runtime_address(config: SuperNodeLifespanConfig) -> str:
    host = f"[{config.host}]" if ":" in config.host else config.host
    return f"{host}:{config.port}"


def _clear(folder: Path) -> None:
    for path in [*folder.glob("task-*.token"), *folder.glob("superexec-*.secret")]:
        path.unlink(missing_ok=True)


def main() -> None:
    config = _parse_supernode_lifespan_config()
    if config.isolation != ISOLATION_MODE_PROCESS:
        raise SystemExit("sites.supernode starts its own SuperExec: run it --isolation process")
    folder = Path(os.environ.get(TOKEN_DIR_ENV, ""))
    if not os.environ.get(TOKEN_DIR_ENV) or not folder.is_dir():
        raise SystemExit(f"sites.supernode: set {TOKEN_DIR_ENV} to a private folder (0700)")
    if folder.stat().st_mode & 0o077:
        raise SystemExit(f"{folder}: the token folder must be private (mode 0700)")
    _clear(folder)  # what a SuperNode that was killed left behind
    key = secrets.token_bytes(32)
    secret = write_private(folder / f"superexec-{os.getpid()}.secret", key)
    config = replace(config, superexec_auth_secret=key)

    handler = logging.StreamHandler()  # refusals in supernode.log; Flower's lines have theirs
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    access_log.addHandler(handler)
    access_log.setLevel(INFO)

    log(INFO, "Starting Flower SuperNode (its local API answers the site's account only)")
    state_factory = NodeStateFactory(objectstore_factory=ObjectStoreFactory())
    server, thread = serve_runtime_api(config, state_factory)

    def stop_runtime_api() -> None:
        server.should_exit = True
        thread.join(timeout=HTTP_SERVER_SHUTDOWN_TIMEOUT)
        if thread.is_alive():
            log(WARN, "Runtime HTTP API server did not stop in time")
            server.force_exit = True
        _clear(folder)  # its ClientApps have read their tokens; the SuperExec goes with us

    add_exit_handler(stop_runtime_api)
    start_superexec(config, secret)
    start_client_internal(
        state_factory=state_factory,
        server_address=config.server_address,
        root_certificates=config.root_certificates,
        insecure=config.insecure,
        authentication_keys=config.authentication_keys,
        max_retries=config.max_retries,
        max_wait_time=config.max_wait_time,
        node_config=config.node_config,
        isolation=config.isolation,
        runtime_api_address=_runtime_address(config),
        runtime_certificates=config.runtime_certificates,
        runtime_root_certificates_path=config.runtime_root_certificates_path,
        health_server_address=config.health_server_address,
        trusted_entities=config.trusted_entities,
        superexec_auth_secret=config.superexec_auth_secret,
        runtime_dependency_install=config.runtime_dependency_install,
    )


if __name__ == "__main__":
    main()
