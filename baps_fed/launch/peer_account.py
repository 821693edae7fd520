"""The coordinator's SuperLink answers only the coordinator's own account.

Flower 1.42's SuperLink serves its Control API (register node keys, list, stop runs, read
their config), its Runtime (ServerAppIo) API and its Fleet API on one loopback HTTP port,
and none of them asks who calls: Control API authentication is OIDC, which this Flower
distribution lacks; the server has no client-certificate (mTLS) or Unix-socket option; its
SuperExec secret (``--superexec-auth-secret-file``) signs task acquisition alone. So any
local account could list the runs and their configs, or stop them. ``SameAccountOnly`` sits
in front of the whole SuperLink app (``coordinator/superlink.py``) and refuses (403) every
request whose TCP peer socket belongs to another account. On Linux the kernel says who owns
each socket (``/proc/net/tcp``: the ``uid`` column), so nothing has to be handed out: only
processes of the coordinator's account (its ``flwr`` commands, its SuperExec and ServerApp,
its Fleet gateway, which forwards the Fleet API alone) get through. A hospital's SuperNode
has the same gap on its local Runtime API and the same guard (``sites/supernode.py``).
Kept free of Flower.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import struct
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]

PROC_NET = Path("/proc/net")
REFUSED = (
    b"this SuperLink answers only the coordinator's own account; hospitals reach its Fleet "
    b"API through the coordinator's public port\n"
)
log = logging.getLogger("baps_fed.superlink_access")


def _address(hex_address: str) -> tuple[str, int]:
    """A ``/proc/net/tcp{,6}`` address (``0100007F:1F90``) as (host, port); IPv4-mapped IPv6
    addresses as their IPv4 form. The kernel prints each 32-bit word in host byte order."""
    host_hex, port_hex = hex_address.split(":")
    words = [int(host_hex[i : i + 8], 16) for i in range(0, len(host_hex), 8)]
    packed = b"".join(struct.pack("=I", w) for w in words)
    ip = ipaddress.ip_address(packed)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), int(port_hex, 16)


def _normal(host: str) -> str:
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def socket_owner(
    peer: tuple[str, int], server: tuple[str, int], proc_net: Path = PROC_NET
) -> int | None:
    """The uid owning the local TCP socket ``peer`` connected to ``server``; None if the
    kernel lists none (the peer has gone, or it is not on this machine)."""
    want_local = (_normal(peer[0]), int(peer[1]))
    want_remote = (_normal(server[0]), int(server[1]))
    for table in ("tcp", "tcp6"):
        path = proc_net / table
        if not path.is_file():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) < 8:
                continue
            try:
                local, remote = _address(fields[1]), _address(fields[2])
            except ValueError:
                continue
            if local == want_local and remote == want_remote:
                return int(fields[7])
    return None


def can_tell_accounts_apart(proc_net: Path = PROC_NET) -> bool:
    return (proc_net / "tcp").is_file()


class SameAccountOnly:
    """ASGI middleware: HTTP requests from a socket owned by another account than ``uid``
    (default: ours) get 403, each with a log line naming the peer, its account and the path.
    Where the system does not list socket owners (not Linux) it lets everything through and
    says so once at start."""

    def __init__(
        self,
        app: ASGIApp,
        uid: int | None = None,
        proc_net: Path = PROC_NET,
        owner: str = "the coordinator's",  # whose account, in the log line
        refusal: bytes = REFUSED,  # the 403's body
    ) -> None:
        self.app, self.uid, self.proc_net = app, os.getuid() if uid is None else uid, proc_net
        self.owner, self.refusal = owner, refusal
        self.enforced = can_tell_accounts_apart(proc_net)
        if not self.enforced:
            log.warning(
                "%s is missing: this system does not tell which account owns a socket; this "
                "loopback port answers every local account",
                proc_net / "tcp",
            )

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and self.enforced:
            client, server = scope.get("client"), scope.get("server")
            owner = socket_owner(client, server, self.proc_net) if client and server else None
            if owner != self.uid:
                peer = f"{client[0]}:{client[1]}" if client else "unknown peer"
                log.warning(
                    "refused %s %s from %s (account %s, not %s %s): 403",
                    scope.get("method", "-"), scope.get("path", "-"), peer,
                    "unknown" if owner is None else owner, self.owner, self.uid,
                )  # fmt: skip
                await _plain(send, 403, self.refusal)
                return
        await self.app(scope, receive, send)


async def _plain(send: Callable, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
