"""The coordinator's public port forwards Flower's Fleet API and nothing else, within
bounds: no body over the Fleet limit is read, no slow client holds it, and each refusal is
logged with the peer (the real gateway process on 127.0.0.1 in front of a stand-in
SuperLink; every process stopped by PID, every wait bounded)."""

from __future__ import annotations

import http.server
import socket
import ssl
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest
from starlette.testclient import TestClient

from baps_fed.launch.certs import make_pilot_certs
from baps_fed.launch.fleet_gateway import create_gateway, is_forwarded
from baps_fed.launch.gateway_limits import FLEET_BODY_LIMIT
from baps_fed.launch.processes import ProcessGroup, free_port, wait_http_ok
from tests.launch.waiting import wait_for


class _Upstream(http.server.BaseHTTPRequestHandler):
    """A stand-in SuperLink: echoes the path, the body and the node-signature header (and
    answers 401 to /v1/fleet/unknown-node, as the SuperLink does to a node it does not know);
    remembers the paths it was sent."""

    seen: list[str] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        self.seen.append(self.path)
        self.send_response(401 if self.path == "/v1/fleet/unknown-node" else 200)
        self.send_header("x-echo-signature", self.headers.get("x-flwr-signature", ""))
        self.end_headers()
        self.wfile.write(self.path.encode() + b"|" + body)

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"healthy")

    def log_message(self, *args):
        pass


@pytest.fixture
def upstream():
    _Upstream.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_fleet_requests_pass_with_their_body_and_signature_headers(upstream):
    with TestClient(create_gateway(upstream, None)) as client:
        reply = client.post(
            "/v1/fleet/pull-messages", content=b"\x00proto", headers={"x-flwr-signature": "s1"}
        )
        assert reply.status_code == 200
        assert reply.content == b"/v1/fleet/pull-messages|\x00proto"
        assert reply.headers["x-echo-signature"] == "s1"
        assert client.get("/health").content == b"healthy"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/control/list-runs",
        "/v1/control/stop-run",
        "/v1/runtime/pull-messages",
        "/docs",
        "/v1/fleet/../control/stop-run",
        "/v1/fleet/%2e%2e/control/stop-run",
        "/v1/fleet//control",
        "/v1/fleetx/pull-messages",
    ],
)
def test_everything_else_is_refused_without_reaching_the_superlink(upstream, path):
    with TestClient(create_gateway(upstream, None)) as client:
        reply = client.post(path, content=b"")
    assert reply.status_code in (403, 404) and b"|" not in reply.content
    assert not is_forwarded(path)


def test_a_silent_superlink_is_a_502_not_a_crash():
    with TestClient(create_gateway(f"127.0.0.1:{free_port()}", None)) as client:
        assert client.post("/v1/fleet/get-run", content=b"").status_code == 502


def test_the_body_limit_holds_the_largest_fleet_request_twice():
    """The limit's derivation, measured with Flower's own framing: the largest object a site
    pushes is an object of its train reply's content, the decoder array (the paper preset,
    for every upload kind), sent as a PushObjectRequest; it must fit in half the limit."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
    from flwr.proto.message_pb2 import PushObjectRequest
    from flwr.proto.node_pb2 import Node
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    from baps_fed.method.ip_decoder import DecoderConfig, build_decoder

    n = max(build_decoder(DecoderConfig(preset=p)).num_params for p in ("basis", "paper", "vp"))
    assert n == 523_870  # the paper preset, as gateway_limits.FLEET_BODY_LIMIT says
    content = RecordDict(
        {
            "arrays": ArrayRecord({"update": Array(np.ones(n, np.float32))}),
            "metrics": MetricRecord({"num-examples": 60.0, "train-loss": 0.5}),
            "site": ConfigRecord({"name": "hospital-a"}),
        }
    )
    bodies = [
        PushObjectRequest(
            node=Node(node_id=2**64 - 1), run_id=2**64 - 1, object_id=object_id,
            object_content=obj.deflate(), session_id="s" * 64,
        ).ByteSize()
        for object_id, obj in get_all_nested_objects(content).items()
    ]  # fmt: skip
    print(f"largest Fleet request body: {max(bodies)} bytes, {max(bodies) - 4 * n} of framing")
    assert 4 * n < max(bodies) < 4 * n + 1024  # the float32 vector and Flower's framing
    assert max(bodies) <= FLEET_BODY_LIMIT // 2


LIMIT = 1 << 20  # the test gateway's body limit (the real one's behaviour, 8x smaller)


@dataclass
class Gateway:
    port: int
    proc: subprocess.Popen
    log: Path
    tls: bool

    def send(self, head: str, body: bytes = b"") -> socket.socket:
        """A connection that has sent ``head`` and ``body`` (over TLS without a client key,
        which is all an outsider has, when the gateway speaks TLS)."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        if self.tls:
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            sock = context.wrap_socket(sock, server_hostname="127.0.0.1")
        sock.sendall(head.encode() + body)
        return sock


@pytest.fixture
def gateway(upstream, tmp_path, request):
    """The gateway as the coordinator runs it, a process of its own, with short timeouts;
    with TLS when the test's parameter says so."""
    port, log, tls = free_port(), tmp_path / "gateway.log", getattr(request, "param", False)
    cmd = [sys.executable, "-m", "baps_fed.launch.fleet_gateway", "--host", "127.0.0.1",
           "--port", str(port), "--upstream", upstream, "--body-limit", str(LIMIT),
           "--header-timeout", "1", "--body-timeout", "2"]  # fmt: skip
    if tls:
        make_pilot_certs(tmp_path / "certs", [], ["hospital-a"])
        cmd += ["--certfile", str(tmp_path / "certs" / "server.crt")]
        cmd += ["--keyfile", str(tmp_path / "certs" / "server.key")]
    with ProcessGroup() as group:
        proc = group.start("gateway", cmd, {}, log)
        wait_http_ok(f"http{'s' * tls}://127.0.0.1:{port}/health", proc, 60, log)
        yield Gateway(port, proc, log, tls)


def _answer(sock: socket.socket) -> bytes:
    """Everything the gateway sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _post(path: str, length: int | None, extra: str = "") -> str:
    size = f"Content-Length: {length}\r\n" if length is not None else ""
    return f"POST {path} HTTP/1.1\r\nHost: coord\r\n{size}{extra}\r\n"


@pytest.mark.parametrize("gateway", [False, True], ids=["http", "tls"], indirect=True)
def test_an_oversized_post_is_refused_before_its_body_is_read(gateway, upstream):
    """Answered 413 after 64 KiB of an announced 300 MB, and the connection dropped: the
    rest cannot even be sent (over TLS too, whose graceful close would read it)."""
    proc, log = gateway.proc, gateway.log
    rss = psutil.Process(proc.pid).memory_info().rss
    sock = gateway.send(_post("/v1/fleet/get-run", 300_000_000), b"x" * 65536)
    with sock:
        status = sock.recv(4096)
        assert status.startswith(b"HTTP/1.1 413"), status
        sent = 65536
        with pytest.raises(OSError):  # the gateway dropped the connection
            while sent < 300_000_000:
                sent += sock.send(b"x" * (1 << 20))
    assert sent < 300_000_000 // 10
    assert psutil.Process(proc.pid).memory_info().rss - rss < 20 * 2**20  # never buffered
    assert _Upstream.seen == []
    wait_for(lambda: "POST /v1/fleet/get-run: 413" in log.read_text(), 30, "the log line")
    line = next(x for x in log.read_text().splitlines() if ": 413 " in x)
    assert "refused 127.0.0.1:" in line and "300000000" in line


def test_a_chunked_body_is_cut_off_at_the_limit_and_one_under_it_passes(gateway, upstream):
    log = gateway.log
    chunk = b"%x\r\n%s\r\n" % (65536, b"y" * 65536)
    head = _post(
        "/v1/fleet/push-object", None, "Transfer-Encoding: chunked\r\nConnection: close\r\n"
    )
    with gateway.send(head, chunk * 4 + b"0\r\n\r\n") as sock:  # 256 KiB: forwarded whole
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"y" * 65536), answer[:200]
    assert _Upstream.seen == ["/v1/fleet/push-object"]
    with gateway.send(head, chunk * (LIMIT // 65536 + 1)) as sock:  # past the limit, no end
        assert _answer(sock).startswith(b"HTTP/1.1 413")
    assert _Upstream.seen == ["/v1/fleet/push-object"]  # the long one never reached it
    wait_for(lambda: "push-object: 413 body over" in log.read_text(), 30, "the log line")


def test_a_slow_client_is_dropped_while_others_are_served(gateway, upstream):
    """A client that sends a header and then nothing (slowloris), and one that announces a
    body and stops halfway, are each dropped after the gateway's timeouts (1 s and 2 s here)
    with a log line; a normal request in the meantime is served."""
    log = gateway.log
    stalled = gateway.send("POST /v1/fleet/pull-messages HTTP/1.1\r\nHost: coord\r\n")
    half = gateway.send(_post("/v1/fleet/push-messages", 100), b"z" * 10)
    with gateway.send(_post("/v1/fleet/heartbeat", 5, "Connection: close\r\n"), b"hello") as ok:
        assert _answer(ok).startswith(b"HTTP/1.1 200")
    with stalled, half:
        assert _answer(stalled).startswith(b"HTTP/1.1 408")  # closed by the gateway
        assert _answer(half).startswith(b"HTTP/1.1 408")
    assert _Upstream.seen == ["/v1/fleet/heartbeat"]
    wait_for(lambda: log.read_text().count(": 408 ") == 2, 30, "two log lines")
    text = log.read_text()
    assert "- /v1/fleet/pull-messages: 408 no complete headers in 1 s" in text
    assert "POST /v1/fleet/push-messages: 408 body not complete in 2 s" in text


def test_every_refusal_has_its_log_line_with_the_peer(gateway, upstream):
    log = gateway.log
    for path, status in (("/v1/control/list-runs", 403), ("/v1/fleet/unknown-node", 401)):
        with gateway.send(_post(path, 0, "Connection: close\r\n")) as sock:
            assert _answer(sock).startswith(f"HTTP/1.1 {status}".encode())
    wait_for(lambda: "unknown-node: 401 by the SuperLink" in log.read_text(), 30, "log lines")
    lines = [x for x in log.read_text().splitlines() if "refused 127.0.0.1:" in x]
    assert any("POST /v1/control/list-runs: 403 not the Fleet API" in x for x in lines), lines
    assert Path(log).stat().st_mode & 0o077 == 0  # the log names peers: this account's only
