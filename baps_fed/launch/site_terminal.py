"""What a hospital's terminal shows while ``baps-fed site`` runs.

Two sources: the site's own process (``sites/worker.py``) writes each round's result and the
run's end to the same terminal itself; here is the SuperNode's side, read from its log
(``LogWatcher``: connected, refused, TLS and connection failures) and turned from Flower's words
into the cause and what to do. Everything here stays at the site.
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
import time
from pathlib import Path

# Flower 1.42's SuperNode log lines (flwr/supernode, flwr/supercore/retry/http_retry.py)
ACTIVATED = "SuperNode ID:"  # logged once the SuperLink has accepted the node: connected
CONNECTED = "Connection successful"  # logged only after failed tries: a reconnection
ENDED = "SuperNode terminated gracefully"  # its main loop has ended (the process may hang)
SSL_ERROR = "ssl.SSLError:"  # the last line of the traceback of a TLS setup that failed
CONNECTION_FAILED = "Connection attempt failed"
NOT_REGISTERED = "Failed to activate SuperNode"  # the SuperLink does not know this node's key
TLS_FAILED = "SSL/TLS handshake error"
_EXIT = re.compile(r"Exit Code: (\d+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LEVEL = re.compile(r"^(?:DEBUG|INFO|WARNING|ERROR|CRITICAL)\s*:\s*")  # Flower's line prefix

WRONG_CA = (
    "the coordinator's certificate is not signed by the CA this site was given (--ca): ask the "
    "coordinator for its ca.crt (the one made with its server certificate)"
)
TLS_TO_PLAIN = (
    "the coordinator does not use TLS (it runs --insecure): start this site with --insecure, "
    "or ask the coordinator to use TLS"
)
PLAIN_TO_TLS = (
    "the coordinator uses TLS and this site was started --insecure: start it with --ca ca.crt "
    "(the coordinator's CA certificate)"
)


def probe(address: str, tls: bool, timeout_s: float = 3.0) -> str:
    """Why a connection attempt to the coordinator fails, found by trying: nothing listens,
    or it speaks TLS to a site started --insecure; '' when neither explains it."""
    host, _, port = address.rpartition(":")
    try:
        raw = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s)
    except OSError as err:
        return (
            f"nothing answers at {address} ({err.strerror or err}): is the coordinator started, "
            "and is this its address and port?"
        )
    with raw:
        if tls:
            return ""
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # is it TLS at all
        try:
            with context.wrap_socket(raw, server_hostname=host):
                return PLAIN_TO_TLS
        except (OSError, ssl.SSLError):
            return ""


class SiteTerminal:
    """The launcher's lines on the site's terminal, each prefixed by the site's name;
    ``finished`` is set once the site's process has seen the run's last round."""

    def __init__(self, name: str, superlink: str, tls: bool = True) -> None:
        self.name, self.superlink, self.tls = name, superlink, tls
        self.finished = threading.Event()

    def say(self, text: str) -> None:
        print(f"site {self.name}: {text}", flush=True)

    def connection_failed(self) -> None:
        why = probe(self.superlink, self.tls)
        cause = f": {why}" if why else ""
        self.say(f"the coordinator at {self.superlink} does not answer (still trying){cause}")

    def supernode_ended(self, status: int, why: str) -> None:
        self.say(f"its SuperNode stopped (exit status {status}): {why}")


class LogWatcher:
    """Reads what the SuperNode appended to its log since the last ``poll`` and tells the
    terminal what matters; keeps what the end of the SuperNode needs explained."""

    def __init__(self, log: Path, terminal: SiteTerminal) -> None:
        self.log, self.terminal = log, terminal
        self._at = log.stat().st_size if log.is_file() else 0  # this start's lines only
        self._partial = ""
        self.not_registered = False
        self.failures = 0  # connection attempts that failed
        self.cause = ""  # the diagnosed reason the SuperNode gave up, if any
        self.connected = False  # the SuperLink has accepted the node
        self.failed = False  # the SuperNode has given up (it may not exit by itself)
        self._lines: list[str] = []
        self._failing_since: float | None = None

    def poll(self) -> None:
        if not self.log.is_file():
            return
        with open(self.log, "rb") as f:
            f.seek(self._at)
            chunk = f.read()
        self._at += len(chunk)
        text = self._partial + chunk.decode(errors="replace")
        *lines, self._partial = text.split("\n")
        for line in lines:
            self._line(_LEVEL.sub("", _ANSI.sub("", line)).strip())

    def _line(self, line: str) -> None:
        if not line:
            return
        self._lines = (self._lines + [line])[-12:]
        if ACTIVATED in line:
            self._failing_since, self.connected = None, True
            self.terminal.say(f"connected to the coordinator at {self.terminal.superlink}; "
                              "waiting for a run")  # fmt: skip
        elif CONNECTED in line:
            self._failing_since = None
            if self.connected:  # the first connection is said with the node's ID
                self.terminal.say(
                    f"connected again to the coordinator at {self.terminal.superlink}"
                )
        elif line.startswith(SSL_ERROR):
            self.failed = True
            self.cause = (
                f"its TLS setup failed ({line.removeprefix(SSL_ERROR).strip()}): check --ca, "
                "it must be the coordinator's ca.crt"
            )
        elif ENDED in line:
            self.failed = True
        elif CONNECTION_FAILED in line:
            self.failures += 1
            now = time.monotonic()
            if self.terminal.finished.is_set():
                return  # the coordinator has gone after the run: expected
            if self._failing_since is None or now - self._failing_since > 60.0:
                self._failing_since = now  # said once a minute, not at every retry
                self.terminal.connection_failed()
        elif NOT_REGISTERED in line:
            self.not_registered = True
        elif "CERTIFICATE_VERIFY_FAILED" in line:
            self.cause = WRONG_CA
        elif "WRONG_VERSION_NUMBER" in line:
            self.cause = TLS_TO_PLAIN
        elif TLS_FAILED in line and not self.cause:
            self.cause = "the TLS handshake with the coordinator failed"

    def tail(self) -> str:
        """Why the SuperNode ended: the diagnosed cause, else Flower's own last words."""
        self.poll()
        if self.cause:
            return self.cause
        for i, line in enumerate(self._lines):
            if _EXIT.search(line) and i + 1 < len(self._lines):
                return f"{line}: {self._lines[i + 1]} (full log: {self.log})"
        return f"see {self.log}; its last line: {self._lines[-1] if self._lines else '(empty)'}"
