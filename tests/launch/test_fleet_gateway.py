"""The coordinator's public port forwards Flower's Fleet API and nothing else."""

from __future__ import annotations

import http.server
import threading

import pytest
from starlette.testclient import TestClient

from baps_fed.launch.fleet_gateway import create_gateway, is_forwarded
from baps_fed.launch.processes import free_port


class _Upstream(http.server.BaseHTTPRequestHandler):
    """A stand-in SuperLink: echoes the path, the body and the node-signature header."""

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
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
