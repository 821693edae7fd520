"""The relay between Flower's per-message ClientApp process and the site's long-lived one.

Flower's SuperNode starts a new ClientApp process for every message (one token per
``flwr-clientapp`` process, Flower 1.42), so whatever a ClientApp builds (the FM, the decoded
data, the calibrated decoder, the zero-shot evaluation) would be rebuilt twice a round. So
``baps-fed site`` runs the site's ClientApp in a process of its own for the whole of its life
(``sites/worker.py``, which ``serve``s it), and the ClientApp Flower starts per message is a
relay (``forward``): it
sends the message and its context over a Unix socket and returns the reply and the context's
new state. It imports neither torch nor the FM, so a message costs a Python start, not a site.

Why not Flower's process isolation mode: there, too, ``flwr-clientapp`` serves one message and
exits. The address is a Unix socket in a private folder (``worker_address``); the site's data
and FM never pass through it.

Wire format: one gRPC method, whose request and reply are the same frame: Flower's own
``Message`` and ``Context`` protobufs, each preceded by its length (4 bytes, big-endian).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from concurrent import futures

import grpc
from flwr.app import Context, Error, Message
from flwr.common.constant import ErrorCode
from flwr.common.serde import (
    context_from_proto,
    context_to_proto,
    message_from_proto,
    message_to_proto,
)
from flwr.proto.message_pb2 import Context as ProtoContext
from flwr.proto.message_pb2 import Message as ProtoMessage

from baps_fed.federation.site_errors import error_reason, new_reference
from baps_fed.federation.worker_address import WORKER_KEY

logger = logging.getLogger(__name__)

_METHOD = "/baps_fed.SiteWorker/Handle"
_LENGTH = struct.Struct(">I")
_MAX_BYTES = 1 << 30  # a decoder update is small; the context's state holds a few of them
_OPTIONS = [
    ("grpc.max_send_message_length", _MAX_BYTES),
    ("grpc.max_receive_message_length", _MAX_BYTES),
]


def pack(message: Message, context: Context) -> bytes:
    parts = (
        message_to_proto(message).SerializeToString(),
        context_to_proto(context).SerializeToString(),
    )
    return b"".join(_LENGTH.pack(len(p)) + p for p in parts)


def unpack(frame: bytes) -> tuple[Message, Context]:
    parts, at = [], 0
    for _ in range(2):
        (n,) = _LENGTH.unpack_from(frame, at)
        parts.append(frame[at + _LENGTH.size : at + _LENGTH.size + n])
        at += _LENGTH.size + n
    if at != len(frame):
        raise ValueError(f"a site-worker frame of {len(frame)} bytes holds {at}")
    message = message_from_proto(ProtoMessage.FromString(parts[0]))
    return message, context_from_proto(ProtoContext.FromString(parts[1]))


# ---- the relay: the ClientApp process Flower starts for each message ----


def forward(msg: Message, context: Context) -> Message:
    """Hand the message to the site's long-lived process; adopt the state it returns. When
    that process does not answer, the reply is an error of a fixed kind (no path leaves)."""
    address = str(context.node_config[WORKER_KEY])
    node_config = {k: v for k, v in context.node_config.items() if k != WORKER_KEY}
    inner = Context(
        run_id=context.run_id,
        node_id=context.node_id,
        node_config=node_config,
        state=context.state,
        run_config=context.run_config,
    )
    try:
        with grpc.insecure_channel(address, options=_OPTIONS) as channel:
            frame = channel.unary_unary(_METHOD)(pack(msg, inner), wait_for_ready=False)
    except grpc.RpcError as err:
        logger.error("the site's process at %s did not answer: %s", address, err)
        name = node_config.get("site-name")
        reason = error_reason("site-worker", new_reference(), str(name) if name else None)
        error = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason)
        return Message(error, reply_to=msg)
    reply, returned = unpack(frame)
    context.state = returned.state  # the site's state across rounds stays in its SuperNode
    return reply


# ---- the site's long-lived process ----

Handler = Callable[[Message, Context], Message]
Observer = Callable[[Message, Context, Message], None]


def serve(address: str, handle: Handler, observe: Observer | None = None) -> grpc.Server:
    """Serve ``handle`` (the site's ClientApp) at ``address``, one message at a time (the
    site's FM and data are not shared between threads); ``observe(msg, context, reply)`` is
    told of every reply (the site's terminal)."""

    def handle_frame(frame: bytes, rpc: grpc.ServicerContext) -> bytes:
        msg, context = unpack(frame)
        reply = handle(msg, context)
        if observe is not None:
            try:
                observe(msg, context, reply)
            except Exception:  # what the terminal shows never fails a round
                logger.exception("reporting a reply failed")
        return pack(reply, context)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1), options=_OPTIONS)
    method = grpc.unary_unary_rpc_method_handler(handle_frame)  # bytes in, bytes out
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("baps_fed.SiteWorker", {"Handle": method}),)
    )
    if server.add_insecure_port(address) == 0:
        raise RuntimeError(f"the site's process could not listen at {address}")
    server.start()
    return server
