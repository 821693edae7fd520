"""``baps-fed fm serve``: any BlackboxFM behind a metered, authenticated gRPC service.

A site then needs only an address and a token, never the weights (nor the FM's name: Describe
tells a client only the prompt kinds it accepts). Request handlers (a thread pool) decode and
check requests, authenticate, admit them against quota and rate limit, and hand them to the
micro-batcher, whose single worker thread is the FM's only caller. Status codes:
INVALID_ARGUMENT for malformed requests, FM contract violations and prompt kinds the FM does not
accept, UNAUTHENTICATED for a missing/unknown token, RESOURCE_EXHAUSTED for quota, rate and
message size (told apart by the ``baps-fm-error`` trailing metadata). The standard health service
reports SERVING until shutdown.
"""

from __future__ import annotations

import ipaddress
import signal
import sys
import threading
import time
from concurrent.futures import CancelledError, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from baps_fed.fm.contract import BlackboxFM, Query, unsupported_prompt_message, validate_query
from baps_fed.fm.errors import FMInputError, QueryBudgetExceeded
from baps_fed.fm.service import codec, protos
from baps_fed.fm.service.batcher import BatcherClosed, BatchStats, MicroBatcher
from baps_fed.fm.service.errors import ERROR_KEY, RETRY_AFTER_KEY
from baps_fed.fm.service.ledger import Ledger, MeteringWriter, Refused
from baps_fed.fm.service.tokens import (
    ANONYMOUS,
    ClientPolicy,
    bearer_token,
    load_tokens,
    token_digest,
)

SERVICE_NAME = "baps_fed.fm.v1.FMService"
FM_SHOWN = "this FM service"  # the FM's own name (a spec, maybe a path) stays on the server
MB = 1024 * 1024


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 50051  # 0: any free port (FMServer.start returns it)
    tls_cert: Path | None = None  # PEM server certificate (chain); with tls_key enables TLS
    tls_key: Path | None = None
    tokens: Path | None = None  # tokens file (see tokens.py); None: open service
    metering: Path | None = None  # per-client usage JSON; also read back at start (quotas)
    metering_interval_s: float = 10.0
    max_message_mb: float = 64.0  # largest request/response, both directions
    # Most decoded pixels (B*H*W) per request, checked on PNG headers before decoding; None:
    # codec.max_pixels_for(max message), the most any answerable request can hold.
    max_decoded_pixels: int | None = None
    max_batch: int = 16  # most images in one FM call; 1 turns micro-batching off
    batch_wait_ms: float = 5.0  # longest wait for other requests to merge with
    workers: int = 32  # request-handler threads (concurrent requests being decoded/waited on)
    grace_s: float = 30.0  # how long shutdown lets in-flight requests finish

    def check(self) -> None:
        """Fail on a bad tokens file, TLS pair or limit before a big FM is loaded."""
        if self.tokens is not None:
            load_tokens(self.tokens)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both --tls-cert and --tls-key (PEM files)")
        for path in (self.tls_cert, self.tls_key):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"TLS file {path} not found")
        if self.max_batch < 1 or self.batch_wait_ms < 0 or self.max_message_mb <= 0:
            raise ValueError("need --max-batch >= 1, --batch-wait-ms >= 0, --max-message-mb > 0")
        if self.max_decoded_pixels is not None and self.max_decoded_pixels < 1:
            raise ValueError("max_decoded_pixels must be >= 1 (or None: from --max-message-mb)")


def _size(n: int) -> str:
    return f"{n / MB:.1f} MB" if n >= MB else f"{n / 1024:.1f} KB"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Servicer:
    """The ``FMService`` implementation (registered by the generated ``add_*_to_server``)."""

    def __init__(
        self,
        batcher: MicroBatcher,
        ledger: Ledger,
        policies: dict[str, ClientPolicy] | None,
        max_message_bytes: int,
        max_pixels: int | None = None,
    ) -> None:
        self.pb2, _ = protos.load()
        self.batcher = batcher
        self.prompt_kinds = frozenset(batcher.fm.prompt_kinds)
        self.ledger = ledger
        self.policies = policies
        self.max_message_bytes = max_message_bytes
        self.max_pixels = (
            codec.max_pixels_for(max_message_bytes) if max_pixels is None else max_pixels
        )

    @staticmethod
    def _abort(
        context: Any,
        code: grpc.StatusCode,
        message: str,
        kind: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        metadata = []
        if kind:
            metadata.append((ERROR_KEY, kind))
        if retry_after_s is not None:
            metadata.append((RETRY_AFTER_KEY, f"{retry_after_s:.3f}"))
        if metadata:
            context.set_trailing_metadata(tuple(metadata))
        context.abort(code, message)

    def _authenticate(self, context: Any) -> ClientPolicy:
        if self.policies is None:
            return ClientPolicy(ANONYMOUS)
        token = bearer_token(context.invocation_metadata())
        if token is None:
            self._abort(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                "missing token: this FM service needs a token (metadata "
                "'authorization: Bearer TOKEN'); ask the FM provider for one",
            )
        policy = self.policies.get(token_digest(token))
        if policy is None:
            self._abort(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                "unknown token: check the token you were given by the FM provider",
            )
        return policy

    def Describe(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC method name)
        self._authenticate(context)
        return self.pb2.DescribeResponse(prompt_kinds=sorted(self.prompt_kinds))

    def Segment(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC method name)
        policy = self._authenticate(context)
        try:
            req = codec.decode_request(request, self.max_pixels)
            query = validate_query(req.images, req.points, req.labels, req.boxes)
            # refused here, before quota is charged (the FM would refuse it too, naming itself)
            refused = [kind for kind in query.kinds if kind not in self.prompt_kinds]
            if refused:
                message = unsupported_prompt_message(FM_SHOWN, refused[0], self.prompt_kinds)
                raise FMInputError(message)
        except FMInputError as err:
            self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(err))
        n, h, w = query.images.shape[:3]
        itemsize = codec.NUMPY_DTYPES[req.output_dtype].itemsize
        reply_bytes = n * h * w * itemsize + 64
        if reply_bytes > self.max_message_bytes:
            self._abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the reply to this request ({_size(reply_bytes)} of logits) exceeds the "
                f"server's message limit ({_size(self.max_message_bytes)}): send fewer "
                "images per call, ask for float16 logits, or restart the server with a larger "
                "--max-message-mb",
                kind="message-size",
            )
        try:
            self.ledger.admit(policy, n)
        except Refused as err:
            self._abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                str(err),
                kind=err.kind,
                retry_after_s=err.retry_after_s,
            )
        ok, seconds = False, 0.0
        try:
            logits, fm_seconds = self._run(context, query, policy.name)
            response = self.pb2.SegmentResponse()
            codec.fill_logits(response.logits, logits, req.output_dtype)
            # a client that gave up meanwhile (its deadline) never gets the answer: not billed
            ok, seconds = context.is_active(), fm_seconds
            return response
        finally:
            self.ledger.settle(policy.name, n, seconds, ok)

    def _run(self, context: Any, query: Query, tenant: str) -> tuple[Any, float]:
        """Logits from the micro-batcher, and this request's share of FM seconds. The tenant
        is the scope of the FM's embedding cache: one client's images are never answered
        from another's embeddings."""
        try:
            job = self.batcher.submit(
                query.images, query.points, query.labels, query.boxes, scope=tenant
            )
        except RuntimeError as err:
            self._abort(context, grpc.StatusCode.UNAVAILABLE, f"{err}; retry shortly")
        context.add_callback(job.future.cancel)
        timeout = context.time_remaining()
        try:
            logits = job.future.result(timeout=timeout)
        except FuturesTimeout:
            self._abort(
                context,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "the FM did not answer within the call's deadline; raise the client's deadline "
                "or send fewer images per call",
            )
        except CancelledError:
            self._abort(context, grpc.StatusCode.CANCELLED, "the call was cancelled")
        except FMInputError as err:
            self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(err))
        except QueryBudgetExceeded as err:
            self._abort(
                context, grpc.StatusCode.RESOURCE_EXHAUSTED, f"server FM: {err}", kind="quota"
            )
        except BatcherClosed as err:
            self._abort(context, grpc.StatusCode.UNAVAILABLE, str(err))
        except Exception as err:
            print(f"fm serve: FM call failed: {err!r}", file=sys.stderr)
            self._abort(
                context,
                grpc.StatusCode.INTERNAL,
                f"the FM failed on this request ({type(err).__name__}: {err}); "
                "report it to the FM provider",
            )
        return logits, job.seconds


class FMServer:
    """A started gRPC server around one FM; ``stop`` drains in-flight requests first."""

    def __init__(self, fm: BlackboxFM, config: ServeConfig | None = None) -> None:
        self.fm = fm
        self.config = config or ServeConfig()
        self.port: int | None = None
        self._server: grpc.Server | None = None
        self._health: health.HealthServicer | None = None
        self._stopped = False

    def start(self) -> int:
        """Bind, start serving, and return the port (useful with ``port=0``)."""
        cfg = self.config
        cfg.check()
        protos.load()  # build generated code before taking any requests
        policies = load_tokens(cfg.tokens) if cfg.tokens is not None else None
        tls = self._tls_credentials()
        if policies is not None and tls is None and not _is_loopback(cfg.host):
            print(
                f"fm serve: WARNING tokens travel in clear text on {cfg.host}; "
                "serve with --tls-cert/--tls-key",
                file=sys.stderr,
            )
        self.ledger = Ledger(cfg.metering, fm_name=self.fm.name)
        self.batcher = MicroBatcher(self.fm, cfg.max_batch, cfg.batch_wait_ms / 1000)
        self.metering = MeteringWriter(
            self.ledger, cfg.metering_interval_s, lambda: {"batching": self.stats().as_dict()}
        )
        max_bytes = int(cfg.max_message_mb * MB)
        server = grpc.server(
            ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="fm-rpc"),
            options=[
                ("grpc.max_receive_message_length", max_bytes),
                ("grpc.max_send_message_length", max_bytes),
                ("grpc.so_reuseport", 0),  # a second server on the same port must fail
            ],
        )
        _, pb2_grpc = protos.load()
        servicer = _Servicer(self.batcher, self.ledger, policies, max_bytes, cfg.max_decoded_pixels)
        pb2_grpc.add_FMServiceServicer_to_server(servicer, server)
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        address = f"{cfg.host}:{cfg.port}"
        try:
            if tls is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, tls)
        except RuntimeError as err:
            port = 0
            reason = str(err)
        else:
            reason = "address in use or not available"
        if port == 0:
            raise OSError(
                f"fm serve: cannot listen on {address} ({reason}); pick another --port or stop "
                "the process holding it"
            )
        self.batcher.start()
        server.start()
        self.metering.start()
        for name in ("", SERVICE_NAME):
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._server, self.port = server, port
        return port

    def _tls_credentials(self) -> grpc.ServerCredentials | None:
        cert, key = self.config.tls_cert, self.config.tls_key
        if cert is None and key is None:
            return None
        if cert is None or key is None:
            raise ValueError("TLS needs both --tls-cert and --tls-key (PEM files)")
        try:
            pair = (Path(key).read_bytes(), Path(cert).read_bytes())
        except OSError as err:
            raise FileNotFoundError(f"cannot read TLS certificate/key: {err}") from err
        return grpc.ssl_server_credentials([pair])

    def stats(self) -> BatchStats:
        """How the micro-batcher grouped requests into FM calls so far."""
        return self.batcher.stats()

    def stop(self, grace_s: float | None = None) -> None:
        """Refuse new calls, let in-flight ones finish (up to ``grace_s``), write metering."""
        if self._server is None or self._stopped:
            return
        self._stopped = True
        if self._health is not None:
            self._health.enter_graceful_shutdown()
        grace = self.config.grace_s if grace_s is None else grace_s
        self._server.stop(grace).wait()
        self.batcher.stop()
        self.metering.stop()

    def __enter__(self) -> FMServer:
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(fm_spec: str, config: ServeConfig, device: str = "cpu") -> int:
    """Serve until SIGTERM/SIGINT, then drain gracefully. Returns an exit status."""
    from baps_fed.fm.spec import load_fm

    config.check()
    protos.load()
    fm = load_fm(fm_spec, device=device)
    server = FMServer(fm, config)
    port = server.start()
    done = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        print(f"fm serve: {signal.Signals(signum).name}: finishing in-flight requests")
        done.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal)
    tls = "TLS" if config.tls_cert else "plaintext"
    auth = f"tokens from {config.tokens}" if config.tokens else "no authentication"
    print(
        f"fm serve: serving FM {fm_spec!r} on {config.host}:{port} ({tls}, {auth}, "
        f"max batch {config.max_batch}, wait {config.batch_wait_ms:g} ms, "
        f"max message {config.max_message_mb:g} MB)",
        flush=True,
    )
    if config.metering:
        print(f"fm serve: metering to {config.metering}", flush=True)
    started = time.monotonic()
    while not done.wait(1.0):
        pass
    server.stop()
    s = server.stats()
    print(
        f"fm serve: stopped after {time.monotonic() - started:.0f} s: {s.requests} requests, "
        f"{s.images} images in {s.fm_calls} FM calls ({s.merged_calls} merged)",
        flush=True,
    )
    return 0
