"""The coordinator's public port: only Flower's Fleet API gets through.

Flower 1.42's SuperLink serves every API on one HTTP port: the Fleet API that SuperNodes use,
and the Control API (register node keys, list and stop runs) and Runtime API that only the
coordinator itself should use; none of the latter asks who is calling. So the SuperLink listens
on loopback only, and this gateway holds the public address: it forwards ``/v1/fleet/...`` and
``/health`` (same TLS certificate, same node-signature headers, so node authentication still
decides who may join) and answers 403 to everything else. The coordinator's own ``flwr``
commands talk to the loopback SuperLink directly.

Run as a process of its own (``python -m baps_fed.launch.fleet_gateway``), started and
stopped with the SuperLink by ``launch/deployment.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

# what a SuperNode calls, matched whole: no "..", no percent-escapes, nothing else passes
_FORWARDED = re.compile(r"^(/v1/fleet/[a-z0-9-]+|/health)$")
# per-connection headers (RFC 9110 7.6.1) and those the two hops set for themselves
_NOT_FORWARDED = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "content-encoding",
}
REFUSED = "this port serves the Fleet API only; the coordinator's other APIs are local to it\n"


def is_forwarded(raw_path: str) -> bool:
    """Only a Fleet API endpoint or the health check, as the client sent it (undecoded)."""
    return _FORWARDED.match(raw_path) is not None


def create_gateway(upstream: str, ca_cert: Path | None, timeout_s: float = 300.0) -> Starlette:
    """An ASGI app that forwards Fleet API requests to ``upstream`` (host:port, TLS verified
    against ``ca_cert``; plain HTTP when it is None)."""
    scheme = "https" if ca_cert is not None else "http"
    client = httpx.AsyncClient(
        base_url=f"{scheme}://{upstream}",
        verify=str(ca_cert) if ca_cert is not None else False,
        timeout=timeout_s,
    )

    async def forward(request: Request) -> Response:
        path = request.scope.get("raw_path", b"").decode("latin-1")
        if not is_forwarded(path):
            return PlainTextResponse(REFUSED, status_code=403)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED}
        try:
            reply = await client.request(
                request.method,
                path,
                params=request.query_params,
                content=await request.body(),
                headers=headers,
            )
        except httpx.HTTPError:
            return PlainTextResponse("the coordinator's SuperLink is not answering\n", 502)
        out = {k: v for k, v in reply.headers.items() if k.lower() not in _NOT_FORWARDED}
        return Response(reply.content, status_code=reply.status_code, headers=out)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)], lifespan=lifespan)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", required=True, help="the public listen address")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True, help="the loopback SuperLink, host:port")
    ap.add_argument("--certfile", type=Path, help="server certificate (TLS)")
    ap.add_argument("--keyfile", type=Path, help="its private key")
    ap.add_argument("--ca-certfile", type=Path, help="the CA that signed the SuperLink's cert")
    args = ap.parse_args(argv)
    uvicorn.run(
        create_gateway(args.upstream, args.ca_certfile),
        host=args.host,
        port=args.port,
        ssl_certfile=str(args.certfile) if args.certfile else None,
        ssl_keyfile=str(args.keyfile) if args.keyfile else None,
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
