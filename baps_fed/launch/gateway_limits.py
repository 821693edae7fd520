"""What the coordinator's public port (``fleet_gateway``) accepts: how large a request body,
how much of them at once, how slow a client, and the access log of every refusal.

Anyone who can reach the port can send to it (node authentication is checked by the SuperLink
behind it, after the gateway has read the request), so every bound here holds for
unauthenticated requests too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# The largest request body a site sends is one object of its train reply: the decoder update,
# a float32 vector of the IP decoder's parameters. The largest decoder the project builds is
# the "paper" preset: 523,870 parameters, 2,095,480 bytes; Flower's framing of that object
# (PushObjectRequest: node, run, session and object ids, array header) adds 308 bytes
# (measured in tests/launch/test_fleet_gateway.py, which fails if it outgrows half the limit).
# Flower also splits any array into chunks of at most 5 MiB
# (FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE), so no Fleet request body exceeds 5 MiB plus framing,
# whatever the decoder. 8 MiB: four times the largest message, above Flower's chunk size.
FLEET_BODY_LIMIT = 8 * 2**20
# Bodies held at once across all requests: a flood of bodies each just under the limit
# (chunked, so their size is unknown until read) gets 503 once this is in use (Flower's
# clients retry a 503); honest sites send a few kilobytes at most (the default decoder's
# update is 72 float32), and 32 MiB still holds 15 paper-decoder updates at once
BODY_BUDGET = 4 * FLEET_BODY_LIMIT
# A client must send a request's headers within this many seconds of connecting (or of its
# request's first byte), and its body within BODY_TIMEOUT_S of the headers: a client that
# sends a header and then nothing (slowloris) is dropped, not waited for
HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 120.0  # 2 MB at 140 kbit/s

access_log = logging.getLogger("baps_fed.gateway.access")


@dataclass(frozen=True)
class GatewayLimits:
    body_limit: int = FLEET_BODY_LIMIT
    body_budget: int = BODY_BUDGET
    header_timeout_s: float = HEADER_TIMEOUT_S
    body_timeout_s: float = BODY_TIMEOUT_S


def log_refusal(peer: str, method: str, path: str, status: int, why: str) -> None:
    """One access-log line per refused request: who, what, the answer and why."""
    access_log.warning("refused %s %s %s: %d %s", peer, method, path, status, why)


class BodyBudget:
    """Bytes of request bodies held at once (one event loop: no lock needed)."""

    def __init__(self, total: int) -> None:
        self.total, self.used = total, 0

    def take(self, n: int) -> bool:
        if self.used + n > self.total:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol, except that a connection whose request headers are not
    complete ``header_timeout_s`` after it opened (or after its request began) is closed,
    with an access-log line (uvicorn itself waits for them forever); and that a connection
    answered before its request's body was all read (a refusal) is dropped as soon as the
    answer is out, instead of a graceful TLS close that would go on reading (and
    discarding) the rest of the body for up to 30 s."""

    header_timeout_s = HEADER_TIMEOUT_S

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # the next request on a kept-alive connection
            self._deadline = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def on_headers_complete(self) -> None:
        self._cancel_deadline()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        if self.cycle is not None and self.cycle.more_body and self.transport.is_closing():
            self._abort_when_sent()
        super().on_response_complete()

    def _abort_when_sent(self, tries: int = 100) -> None:
        """Drop the connection once the answer has left (at most a second from now)."""
        if self.transport.get_write_buffer_size() == 0 or tries == 0:
            self.transport.abort()
        else:
            self.loop.call_later(0.01, self._abort_when_sent, tries - 1)

    def _cancel_deadline(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()
        self._deadline = None

    def _headers_too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        peer = f"{self.client[0]}:{self.client[1]}" if self.client else "unknown peer"
        path = (getattr(self, "url", b"") or b"-").decode("latin-1")[:200]
        log_refusal(peer, "-", path, 408, f"no complete headers in {self.header_timeout_s:g} s")
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\n\r\n")
        self.transport.close()
        self._abort_when_sent()  # a TLS close would wait for this client's reply


def header_deadline_protocol(timeout_s: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class for uvicorn's ``http=`` with this header timeout."""
    return type("HeaderDeadline", (HeaderDeadlineProtocol,), {"header_timeout_s": timeout_s})
