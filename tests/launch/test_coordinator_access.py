"""Who may reach the coordinator's SuperLink, and who may read what the coordinator writes.

A real coordinator (SuperLink behind ``coordinator/superlink.py``, its SuperExec, the Fleet
gateway, ``flwr run`` and the ServerApp) on 127.0.0.1 with TLS: another local account's plain
request to its Control API is refused, the ServerApp's token is in no process's command line,
and every file and folder of the run and of the certs is this account's alone. Every process
is stopped by PID, pass or fail; every wait is bounded."""

from __future__ import annotations

import os
import socket
import ssl
import stat
import threading
from pathlib import Path

import psutil
import pytest
import uvicorn

from baps_fed.launch.certs import make_pilot_certs
from baps_fed.launch.deployment import CoordinatorSettings, run_coordinator
from baps_fed.launch.peer_account import SameAccountOnly
from baps_fed.launch.processes import ProcessGroup, free_port
from tests.launch.waiting import wait_for

NOBODY = 65534


def _post(port: int, path: str, tls: bool) -> int:
    """A plain POST with an empty body (an empty protobuf request), as any local program
    could send; its status."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    if tls:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        raw = context.wrap_socket(raw, server_hostname="127.0.0.1")
    with raw:
        raw.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n"
            "Content-Type: application/protobuf\r\nConnection: close\r\n\r\n".encode()
        )
        return int(raw.recv(4096).split(b" ", 2)[1])


def _post_as(uid: int, port: int, path: str, tls: bool) -> int:
    """The same request from a process of another account (a forked child that drops to
    ``uid``); needs root to switch."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no locks, no logging, straight out
        status = 0
        try:
            os.setgid(uid)
            os.setuid(uid)
            status = _post(port, path, tls)
        finally:
            os.write(write, str(status).encode())
            os._exit(0)
    os.close(write)
    try:
        return int(os.read(read, 16) or b"0")
    finally:
        os.close(read)
        os.waitpid(pid, 0)


def _private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


def _superlink_port(group: ProcessGroup) -> int:
    (proc,) = [p for name, p, _ in group.procs if name == "superlink"]
    cmd = proc.args
    return int(cmd[cmd.index("--port") + 1])


def test_only_the_coordinators_account_reaches_its_superlink_and_reads_its_files(tmp_path):
    certs = tmp_path / "certs"
    make_pilot_certs(certs, [], ["hospital-a"])
    assert all(_private(p) for p in [certs, *certs.rglob("*")])  # keys and certificates
    folder = tmp_path / "coordinator"
    settings = CoordinatorSettings(
        folder=folder, certs=certs, node_keys=[certs / "nodes" / "hospital-a.pub"],
        port=free_port(), run_config={"rounds": 1, "min-sites": 1, "round-timeout": 240.0},
    )  # fmt: skip
    group = ProcessGroup()
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(s=run_coordinator(settings, group)))
    thread.daemon = True
    try:
        thread.start()

        def serverapp() -> psutil.Process | None:
            for pid in group.pids():
                try:
                    if any("flwr-serverapp" in a for a in psutil.Process(pid).cmdline()):
                        return psutil.Process(pid)
                except psutil.NoSuchProcess:
                    continue
            return None

        wait_for(lambda: serverapp() is not None, 180, "the ServerApp to start")
        # the token is handed over in a private file, never on a command line
        cmdlines = {pid: psutil.Process(pid).cmdline() for pid in group.pids()}
        assert not any("--token" in args for args in cmdlines.values()), cmdlines
        args = serverapp().cmdline()
        token_file = Path(args[args.index("--token-file") + 1])
        assert _private(token_file) and _private(token_file.parent)

        port = _superlink_port(group)
        assert _post(port, "/v1/control/list-runs", tls=True) == 200  # this account: served
        if os.getuid() == 0:  # another account: refused, and the refusal logged with its peer
            assert _post_as(NOBODY, port, "/v1/control/list-runs", tls=True) == 403
            assert _post_as(NOBODY, port, "/v1/control/stop-run", tls=True) == 403
            log = (folder / "superlink.log").read_text()
            assert "refused POST /v1/control/list-runs from 127.0.0.1:" in log
            assert f"(account {NOBODY}, not the coordinator's 0): 403" in log

        # the run folder and everything in it (database, logs, run config, FLWR_HOME)
        assert (folder / "superlink.db").is_file() and (folder / "run.log").is_file()
        for path in [folder, *folder.rglob("*")]:
            assert _private(path), f"{path}: mode {stat.S_IMODE(path.stat().st_mode):o}"
    finally:
        group.stop()
        thread.join(timeout=60)
    assert not thread.is_alive()


def test_the_guard_refuses_a_socket_of_another_account(tmp_path):
    """The guard itself on a real server: a request from this account passes when the
    account is ours and is refused (403) when the guard expects another."""

    async def hello(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"hello"})

    for expected, status in ((os.getuid(), 200), (os.getuid() + 1, 403)):
        port = free_port()
        app = SameAccountOnly(hello, uid=expected)
        config = uvicorn.Config(app, "127.0.0.1", port, log_level="warning", ws="none")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            wait_for(lambda s=server: s.started, 30, "the test server")
            assert _post(port, "/v1/control/list-runs", tls=False) == status
        finally:
            server.should_exit = True
            thread.join(timeout=30)


@pytest.mark.parametrize("table", ["tcp", "tcp6"])
def test_the_kernel_table_names_the_owner_of_a_loopback_socket(table):
    from baps_fed.launch.peer_account import socket_owner

    family, host = (socket.AF_INET, "127.0.0.1") if table == "tcp" else (socket.AF_INET6, "::1")
    with socket.create_server((host, 0), family=family) as server:
        with socket.create_connection(server.getsockname()[:2]) as client:
            conn, _ = server.accept()
            with conn:
                assert socket_owner(client.getsockname()[:2], server.getsockname()[:2]) == (
                    os.getuid()
                )
                assert socket_owner(("127.0.0.1", 1), server.getsockname()[:2]) is None
