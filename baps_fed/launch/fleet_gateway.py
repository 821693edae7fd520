"""The coordinator's public port: only Flower's Fleet API gets through.

Flower 1.42's SuperLink serves every API on one HTTP port: the Fleet API that SuperNodes use,
and the Control API (register node keys, list and stop runs) and Runtime API that only the
coordinator itself should use; none of the latter asks who is calling. So the SuperLink listens
on loopback only, and this gateway holds the public address: it forwards ``/v1/fleet/...`` and
``/health`` (same TLS certificate, same node-signature headers, so node authentication still
decides who may join) and answers 403 to everything else. The coordinator's own ``flwr``
commands talk to the loopback SuperLink directly.

Anyone may send to this port, so it bounds what it takes (``gateway_limits``): a body over
the Fleet limit is refused by its Content-Length before it is read (a chunked one as soon as
it passes the limit), bodies held at once are capped, and a client too slow with its headers
or body is dropped. Every refused request gets an access-log line with the peer's address,
the path and the status (the SuperLink sees every caller as 127.0.0.1), also when the
SuperLink behind refuses it (an unregistered node, say).

Run as a process of its own (``python -m baps_fed.launch.fleet_gateway``), started and
stopped with the SuperLink by ``launch/deployment.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from baps_fed.launch.gateway_limits import (
    BodyBudget,
    GatewayLimits,
    header_deadline_protocol,
    log_refusal,
)

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


class Refused(Exception):
    """A request the gateway answers itself with ``status`` (and logs)."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status, self.why = status, why


def create_gateway(
    upstream: str,
    ca_cert: Path | None,
    timeout_s: float = 300.0,
    limits: GatewayLimits | None = None,
) -> Starlette:
    """An ASGI app that forwards Fleet API requests to ``upstream`` (host:port, TLS verified
    against ``ca_cert``; plain HTTP when it is None), within ``limits``."""
    scheme = "https" if ca_cert is not None else "http"
    client = httpx.AsyncClient(
        base_url=f"{scheme}://{upstream}",
        verify=str(ca_cert) if ca_cert is not None else False,
        timeout=timeout_s,
    )
    limits = limits or GatewayLimits()
    budget = BodyBudget(limits.body_budget)

    async def read_body(request: Request) -> bytes:
        """The body, refused (413) by its Content-Length before any of it is read, or as soon
        as a body of unknown length passes the limit; 503 when the budget is in use, 408 when
        it does not arrive in time."""
        length = request.headers.get("content-length")
        if length is not None and not length.isdigit():
            raise Refused(400, f"Content-Length {length[:40]!r} is not a number")
        if length is not None and int(length) > limits.body_limit:
            raise Refused(413, f"Content-Length {length} over the {limits.body_limit}-byte limit")
        held = int(length or 0)
        if not budget.take(held):
            raise Refused(503, "too many request bodies at once")
        body = bytearray()
        try:
            async with asyncio.timeout(limits.body_timeout_s):
                async for chunk in request.stream():
                    if len(body) + len(chunk) > limits.body_limit:
                        raise Refused(413, f"body over the {limits.body_limit}-byte limit")
                    if len(body) + len(chunk) > held:  # a body of unknown length grows
                        if not budget.take(len(body) + len(chunk) - held):
                            raise Refused(503, "too many request bodies at once")
                        held = len(body) + len(chunk)
                    body += chunk
        except TimeoutError:
            raise Refused(408, f"body not complete in {limits.body_timeout_s:g} s") from None
        finally:
            budget.give(held)
        return bytes(body)

    async def forward(request: Request) -> Response:
        path = request.scope.get("raw_path", b"").decode("latin-1")
        peer = f"{request.client.host}:{request.client.port}" if request.client else "unknown"
        try:
            if not is_forwarded(path):
                raise Refused(403, "not the Fleet API")
            body = await read_body(request)
        except Refused as refused:
            log_refusal(peer, request.method, path[:200], refused.status, refused.why)
            text = REFUSED if refused.status == 403 else f"{refused.why}\n"
            # the unread rest of the body is dropped with the connection
            return PlainTextResponse(text, refused.status, headers={"connection": "close"})
        except ClientDisconnect:
            return Response(status_code=400)  # the client left; nobody reads this
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED}
        try:
            reply = await client.request(
                request.method, path, params=request.query_params, content=body, headers=headers
            )
        except httpx.HTTPError:
            log_refusal(peer, request.method, path, 502, "the SuperLink is not answering")
            return PlainTextResponse("the coordinator's SuperLink is not answering\n", 502)
        if reply.status_code >= 400:  # the SuperLink refused it (a node it does not know...)
            log_refusal(peer, request.method, path, reply.status_code, "by the SuperLink")
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
    default = GatewayLimits()
    ap.add_argument("--body-limit", type=int, default=default.body_limit, help="bytes")
    ap.add_argument("--header-timeout", type=float, default=default.header_timeout_s, help="s")
    ap.add_argument("--body-timeout", type=float, default=default.body_timeout_s, help="s")
    args = ap.parse_args(argv)
    limits = GatewayLimits(
        body_limit=args.body_limit,
        body_budget=max(default.body_budget, args.body_limit),
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
    )
    # the access log of refusals, with a time stamp, to the gateway's log (its stderr)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per forwarded request
    uvicorn.run(
        create_gateway(args.upstream, args.ca_certfile, limits=limits),
        host=args.host,
        port=args.port,
        ssl_certfile=str(args.certfile) if args.certfile else None,
        ssl_keyfile=str(args.keyfile) if args.keyfile else None,
        http=header_deadline_protocol(limits.header_timeout_s),
        ws="none",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
