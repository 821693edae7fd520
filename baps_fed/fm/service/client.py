"""``GrpcFM``: a remote FM service used as any other BlackboxFM (spec ``grpc://HOST:PORT?...``).

Spec options (URL query; all optional)::

    grpc://fm.example.org:50051?tls_ca=/etc/fm/ca.pem&token_env=FM_TOKEN&dtype=float16&png=1

    token=T          the client's token (visible in process lists: prefer token_env/token_file)
    token_env=VAR    read the token from environment variable VAR
    token_file=PATH  read the token from a file (first line)
                     (none of the three: $BAPS_FED_FM_TOKEN if set, else no token)
    tls=1            TLS with the system's root certificates
    tls_ca=PATH      TLS, trusting this PEM root certificate (a private CA)
    server_name=N    the name the server certificate must carry, if not HOST
    dtype=float16    logits travel as float16 (half the bytes; returned as float32)
    png=1            images travel PNG-compressed (lossless; less bandwidth, more CPU)
    deadline=S       seconds per attempt (default 120)
    max_images=N     images per request (default 8): a longer query goes as several requests,
                     each with its own deadline (a CPU LiteMedSAM answers ~1 image/s)
    retries=K        retries on UNAVAILABLE / rate limit, exponential backoff (default 8, ~25 s)
    max_message_mb=M largest message this client sends or accepts (default 256)

The client keeps its own ``QueryMeter`` and local budget like every BlackboxFM; the service's
quota and metering are separate and authoritative for billing. Its ``prompt_kinds`` are those of
the FM behind the service, asked once (Describe) on first use; a server from before Describe
takes points only.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import grpc
import numpy as np

from baps_fed.fm.contract import PROMPT_KINDS, BlackboxFM, Query
from baps_fed.fm.errors import FMInputError
from baps_fed.fm.service import codec, protos
from baps_fed.fm.service.errors import (
    ERROR_KEY,
    RETRY_AFTER_KEY,
    FMAuthError,
    FMMessageTooLarge,
    FMRateLimited,
    FMServiceFailure,
    FMUnavailable,
    RemoteQuotaExceeded,
)

TOKEN_ENV = "BAPS_FED_FM_TOKEN"
MB = 1024 * 1024
POINTS_ONLY = frozenset({"point"})  # what a server without Describe accepts


@dataclass
class GrpcFMOptions:
    token: str | None = None
    tls: bool = False
    tls_ca: Path | None = None
    server_name: str | None = None
    dtype: str = "float32"
    png: bool = False
    deadline_s: float = 120.0
    max_images: int = 8
    retries: int = 8
    backoff_s: float = 0.25
    max_backoff_s: float = 5.0
    max_message_mb: float = 256.0

    def __post_init__(self) -> None:
        if self.dtype not in codec.OUTPUT_DTYPES:
            raise ValueError(f"dtype must be float32 or float16, got {self.dtype!r}")
        if self.retries < 0 or self.deadline_s <= 0 or self.max_images < 1:
            raise ValueError("retries must be >= 0, deadline > 0 and max_images >= 1")


class GrpcSpecError(ValueError):
    """A ``grpc://`` spec that cannot be used; the message lists the valid form."""


_FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def _flag(key: str, value: str) -> bool:
    if value.lower() not in _FLAGS:
        raise GrpcSpecError(f"grpc spec option {key}={value!r}: use 1 or 0")
    return _FLAGS[value.lower()]


def parse_grpc_spec(spec: str) -> tuple[str, GrpcFMOptions]:
    """``grpc://HOST:PORT?opt=value&...`` -> (``HOST:PORT``, options); see the module doc."""
    parts = urlsplit(spec)
    if parts.scheme != "grpc" or not parts.hostname or parts.port is None or parts.path:
        raise GrpcSpecError(
            f"FM spec {spec!r}: expected grpc://HOST:PORT[?token_env=VAR&tls_ca=PATH&dtype="
            "float16&png=1&deadline=S&retries=K]"
        )
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    opts: dict[str, Any] = {}
    token_sources = 0
    for key, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if key == "token":
            opts["token"], token_sources = value, token_sources + 1
        elif key == "token_env":
            if value not in os.environ:
                raise GrpcSpecError(f"FM spec: environment variable {value} (token_env) not set")
            opts["token"], token_sources = os.environ[value], token_sources + 1
        elif key == "token_file":
            try:
                opts["token"] = Path(value).read_text().strip().splitlines()[0]
            except (OSError, IndexError) as err:
                raise GrpcSpecError(f"FM spec: cannot read a token from {value}: {err}") from err
            token_sources += 1
        elif key in ("tls", "png"):
            opts[key] = _flag(key, value)
        elif key == "tls_ca":
            opts["tls_ca"] = Path(value)
        elif key in ("server_name", "dtype"):
            opts[key] = value
        elif key in ("deadline", "max_message_mb"):
            opts["deadline_s" if key == "deadline" else key] = float(value)
        elif key in ("retries", "max_images"):
            opts[key] = int(value)
        else:
            raise GrpcSpecError(
                f"FM spec {spec!r}: unknown option {key!r}; known: token, token_env, "
                "token_file, tls, tls_ca, server_name, dtype, png, deadline, max_images, "
                "retries, max_message_mb"
            )
    if token_sources > 1:
        raise GrpcSpecError("FM spec: give only one of token, token_env, token_file")
    if token_sources == 0 and os.environ.get(TOKEN_ENV):
        opts["token"] = os.environ[TOKEN_ENV]
    try:
        return f"{host}:{parts.port}", GrpcFMOptions(**opts)
    except ValueError as err:
        raise GrpcSpecError(f"FM spec: {err}") from err


class _Unimplemented(Exception):
    """The server does not have this RPC (an older server)."""


class GrpcFM(BlackboxFM):
    """A BlackboxFM whose forward pass runs in a ``baps-fed fm serve`` process."""

    def __init__(
        self,
        target: str,
        options: GrpcFMOptions | None = None,
        budget_images: int | None = None,
    ) -> None:
        super().__init__(budget_images=budget_images)
        self.target = target
        self.options = options or GrpcFMOptions()
        self.name = f"grpc://{target}"  # never the token
        self._pb2, pb2_grpc = protos.load()
        self._channel = self._open_channel()
        self._stub = pb2_grpc.FMServiceStub(self._channel)
        self._prompt_kinds: frozenset[str] | None = None

    @property  # type: ignore[override]
    def prompt_kinds(self) -> frozenset[str]:
        """The prompt kinds of the FM behind the service, asked on first use (with the spec's
        deadline and retries; its errors are the same as ``segment``'s)."""
        if self._prompt_kinds is None:
            try:
                reply = self._call(self._stub.Describe, self._pb2.DescribeRequest(), 0, True)
            except _Unimplemented:  # a server that predates Describe (and boxes)
                self._prompt_kinds = POINTS_ONLY
            else:  # kinds this client cannot send are left out
                self._prompt_kinds = frozenset(reply.prompt_kinds) & frozenset(PROMPT_KINDS)
        return self._prompt_kinds

    @classmethod
    def from_spec(cls, spec: str, budget_images: int | None = None) -> GrpcFM:
        target, options = parse_grpc_spec(spec)
        return cls(target, options, budget_images=budget_images)

    def _open_channel(self) -> grpc.Channel:
        o = self.options
        limit = int(o.max_message_mb * MB)
        channel_options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit),
            # Reconnect quickly after a server restart (defaults back off up to 2 minutes).
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", int(o.max_backoff_s * 1000)),
        ]
        if not (o.tls or o.tls_ca):
            return grpc.insecure_channel(self.target, options=channel_options)
        root = None
        if o.tls_ca is not None:
            try:
                root = Path(o.tls_ca).read_bytes()
            except OSError as err:
                raise FileNotFoundError(f"cannot read the TLS CA file {o.tls_ca}: {err}") from err
        if o.server_name:
            channel_options.append(("grpc.ssl_target_name_override", o.server_name))
        creds = grpc.ssl_channel_credentials(root_certificates=root)
        return grpc.secure_channel(self.target, creds, options=channel_options)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> GrpcFM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def health(self, timeout_s: float = 5.0) -> str:
        """The service's standard health status, e.g. ``SERVING`` or ``NOT_SERVING``."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self._channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def _segment(self, query: Query) -> np.ndarray:
        """The query in requests of at most ``max_images`` images, each with its deadline."""
        step = self.options.max_images
        parts = [
            self._request(query, slice(i, i + step)) for i in range(0, len(query.images), step)
        ]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _request(self, query: Query, part: slice) -> np.ndarray:
        def cut(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[part]

        o = self.options
        request = codec.encode_request(
            self._pb2.SegmentRequest(),
            query.images[part],
            cut(query.points),
            cut(query.labels),
            o.png,
            o.dtype,
            cut(query.boxes),
        )
        reply = self._call(self._stub.Segment, request, len(query.images[part]))
        return codec.read_logits(reply.logits)

    def _call(self, method: Any, request: Any, n: int, optional: bool = False) -> Any:
        """One RPC with the token, deadline and retries; errors translated (see _translate).
        ``optional``: the server may lack this RPC (``_Unimplemented`` is raised then)."""
        o = self.options
        metadata = (("authorization", f"Bearer {o.token}"),) if o.token else ()
        delay = o.backoff_s
        for attempt in range(o.retries + 1):
            try:
                return method(request, timeout=o.deadline_s, metadata=metadata)
            except grpc.RpcError as err:
                if optional and err.code() == grpc.StatusCode.UNIMPLEMENTED:
                    raise _Unimplemented() from None
                wait = self._retry_wait(err, delay) if attempt < o.retries else None
                if wait is None:
                    raise self._translate(err, n, request, attempt + 1) from None
                time.sleep(wait)
                delay = min(delay * 2, o.max_backoff_s)
        raise AssertionError("unreachable")

    @staticmethod
    def _trailing(err: grpc.RpcError) -> dict[str, str]:
        try:
            return {k: v for k, v in (err.trailing_metadata() or ()) if isinstance(v, str)}
        except Exception:
            return {}

    def _retry_wait(self, err: grpc.RpcError, delay: float) -> float | None:
        """Seconds to wait before retrying, or None if this error is final."""
        jittered = delay * random.uniform(0.8, 1.2)
        if err.code() == grpc.StatusCode.UNAVAILABLE:
            return jittered
        meta = self._trailing(err)
        if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and meta.get(ERROR_KEY) == "rate":
            return max(float(meta.get(RETRY_AFTER_KEY, 0.0)), jittered)
        return None

    def _translate(self, err: grpc.RpcError, n: int, request: Any, attempts: int) -> Exception:
        code, details = err.code(), err.details() or ""
        kind = self._trailing(err).get(ERROR_KEY)
        where = f"FM service {self.target}"
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return FMAuthError(
                f"{where} refused this client: {details}. Give the token with token_env=VAR "
                f"or token_file=PATH in the spec, or set {TOKEN_ENV}"
            )
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            if kind == "quota":
                return RemoteQuotaExceeded(f"{where}: {details}")
            if kind == "rate":
                return FMRateLimited(f"{where}: {details} (after {attempts} attempts)")
            if kind == "message-size":  # the server's own check; its message says it all
                return FMMessageTooLarge(f"{where}: {details}")
            size = request.ByteSize() / MB
            return FMMessageTooLarge(
                f"{where}: message too large ({details}); this call sent {n} images "
                f"({size:.2f} MB). Send fewer images per call, use png=1 and/or dtype=float16 "
                "in the spec, or ask the provider to raise `fm serve --max-message-mb` "
                "(and raise max_message_mb= here for big replies)"
            )
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return FMInputError(f"{where} rejected the query: {details}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return FMServiceFailure(
                f"{where}: no answer within {self.options.deadline_s:g} s; raise deadline= in "
                "the spec or send fewer images per call"
            )
        if code == grpc.StatusCode.UNAVAILABLE:
            return FMUnavailable(
                f"{where} unreachable after {attempts} attempts ({details}); check that "
                "`baps-fed fm serve` runs there, the address, and the TLS settings (tls_ca=)"
            )
        return FMServiceFailure(f"{where} failed: {code.name}: {details}")
