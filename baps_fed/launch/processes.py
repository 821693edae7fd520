"""Start and stop Flower's processes (SuperLink, SuperNodes, ``flwr run``) for our commands.

Every process is started in its own session and remembered by PID; stopping it also stops
every descendant it started (Flower's SuperExec, ServerApp, simulation and Ray workers), by
PID, never by a name pattern. ``ProcessGroup`` is a context manager, so an error or Ctrl-C
in the caller still stops everything; and on Linux each process is told to stop when the one
that started it dies, SIGKILL included (``die_with_parent``), so none is left running headless.
Each starts with umask 0o077: what it and its own children write is this account's alone.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import psutil

from baps_fed.launch.private_files import PRIVATE_UMASK, open_private_log

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_PR_SET_CHILD_SUBREAPER = 36


def die_with_parent() -> None:
    """Run in the child before exec: Linux sends it SIGTERM when its parent dies (even by
    SIGKILL), so it shuts down as on Ctrl-C and takes its own children with it."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def become_subreaper(own: Callable[[], Collection[int]], every_s: float = 5.0) -> None:
    """Linux: what this process's descendants leave behind when their own parent exits (Ray's
    workers outlive ``flwr-simulation`` by seconds) is re-parented to this process instead of
    init, so it stays in the tree ``ProcessGroup.stop`` ends by PID. A thread collects those
    orphans once they end (init's job), never a child in ``own()``: its Popen waits for it."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1)
    threading.Thread(target=_reap_adopted, args=(own, every_s), daemon=True).start()


def _reap_adopted(own: Callable[[], Collection[int]], every_s: float) -> None:
    me = psutil.Process()
    while True:
        for child in me.children():
            try:
                ended = child.status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                continue
            if ended and child.pid not in own():
                try:
                    os.waitpid(child.pid, os.WNOHANG)
                except ChildProcessError:
                    pass
        time.sleep(every_s)


def child_options() -> dict:
    """Popen options of every process we start: its own session, private files, and it dies
    with us."""
    options: dict = {"start_new_session": True, "umask": PRIVATE_UMASK}
    if sys.platform.startswith("linux"):
        options["preexec_fn"] = die_with_parent
    return options


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_free_port(host: str, port: int) -> None:
    """Refuse a port something already serves: a readiness check would take the other
    process's answer for ours (an earlier coordinator still running, say)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            raise RuntimeError(
                f"{host}:{port} is already in use by another process ({err.strerror}): stop it "
                "(an earlier coordinator still running?) or choose another --port"
            ) from None


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for Flower's commands: this interpreter's bin first (SuperLink starts
    ``flower-superexec`` by name), our FLWR_HOME, no update check."""
    env = os.environ.copy()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["FLWR_HOME"] = str(flwr_home)
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    return env


class ProcessGroup:
    """Processes started for one job; ``stop()`` (or leaving the ``with``) ends them all."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen, Path | None]] = []

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(
        self,
        name: str,
        cmd: Sequence[str],
        env: dict[str, str],
        log: Path | None = None,
        inherit: bool = False,
    ) -> subprocess.Popen:
        """Start ``cmd``; its output goes to ``log``, or to our own terminal (``inherit``), or
        nowhere."""
        out = open_private_log(log) if log else None if inherit else subprocess.DEVNULL
        try:
            err = subprocess.STDOUT if out is not None else None
            proc = subprocess.Popen(list(cmd), env=env, stdout=out, stderr=err, **child_options())
        finally:
            if log:
                out.close()  # the child has its own copy of the descriptor
        return self.adopt(name, proc, log)

    def adopt(self, name: str, proc: subprocess.Popen, log: Path | None = None):
        """Own a process started elsewhere: stop() will end it and its children."""
        self.procs.append((name, proc, log))
        return proc

    def forget(self, proc: subprocess.Popen) -> None:
        """Drop a process that has already ended (a restarted one is adopted anew)."""
        self.procs = [p for p in self.procs if p[1] is not proc]

    def stop_one(self, proc: subprocess.Popen, grace_s: float = 10.0) -> None:
        _terminate_tree(proc.pid, grace_s)
        proc.wait(timeout=grace_s)

    def stop(self, grace_s: float = 10.0) -> None:
        for _, proc, _ in reversed(self.procs):
            if proc.poll() is None:
                _terminate_tree(proc.pid, grace_s)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=grace_s)
        self.procs.clear()

    def pids(self) -> list[int]:
        """Every live PID this group started, children included (for tests and logs)."""
        pids = []
        for _, proc, _ in self.procs:
            try:
                parent = psutil.Process(proc.pid)
                pids += [proc.pid] + [c.pid for c in parent.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
        return pids


def _terminate_tree(pid: int, grace_s: float) -> None:
    """SIGTERM the process and all its descendants (collected first, by PID), then SIGKILL
    whatever is still alive after ``grace_s``."""
    try:
        root = psutil.Process(pid)
        tree = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for p in tree:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace_s)


def wait_http_ok(url: str, proc: subprocess.Popen, timeout_s: float, log: Path | None) -> None:
    """Poll ``url`` until it answers 200; fail early, with the log's tail, if proc exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2, context=_no_verify()) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not come up within {timeout_s:.0f} s{_tail(log)}")


def _no_verify():
    """Readiness probes only ask "is it listening"; TLS is verified by Flower's own clients."""
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _tail(log: Path | None, lines: int = 15) -> str:
    if log is None or not log.is_file():
        return ""
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return f"; last lines of {log}:\n" + "\n".join(text)
