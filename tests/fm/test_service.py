"""The FM as a gRPC service: real servers on 127.0.0.1, in-process or as a `baps-fed` subprocess.

Every server is started on a free port (bound as port 0) and stopped in a ``finally``; every
client call carries a short deadline, so no test can hang.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest

from baps_fed.fm.contract import BlackboxFM, Query
from baps_fed.fm.errors import FMInputError, QueryBudgetExceeded
from baps_fed.fm.sam_batched import BatchedSam
from baps_fed.fm.service import codec, protos
from baps_fed.fm.service.batcher import BatcherClosed, MicroBatcher
from baps_fed.fm.service.client import GrpcFM, GrpcFMOptions, GrpcSpecError, parse_grpc_spec
from baps_fed.fm.service.errors import (
    FMAuthError,
    FMMessageTooLarge,
    FMRateLimited,
    FMUnavailable,
    RemoteQuotaExceeded,
)
from baps_fed.fm.service.server import FMServer, ServeConfig
from baps_fed.fm.service.tokens import TokensFileError, load_tokens
from baps_fed.fm.spec import load_fm
from baps_fed.fm.tiny import save_tiny_weights
from baps_fed.fm.torch_fm import TorchSamFM
from tests.conftest import SMALL_ARCH

TOKENS = """
[[client]]
name = "hospital-a"
token = "token-a-0123456789"
quota_images = 4

[[client]]
name = "hospital-b"
token = "token-b-0123456789"
rate_images_per_s = 2
"""


@pytest.fixture
def fm(small_sam) -> TorchSamFM:
    return TorchSamFM(BatchedSam(small_sam), "small")


def _query(b: int = 2, h: int = 48, w: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8)
    points = np.stack([rng.uniform(0, w, (b, 1)), rng.uniform(0, h, (b, 1))], -1)
    return images, points.astype(np.float32)


@contextmanager
def serving(fm: BlackboxFM, **config) -> Iterator[FMServer]:
    config = {"port": 0, "grace_s": 5.0, **config}
    server = FMServer(fm, ServeConfig(**config))
    server.start()
    try:
        yield server
    finally:
        server.stop(grace_s=2.0)


def _client(server: FMServer, **options) -> GrpcFM:
    options = {"deadline_s": 20.0, "retries": 0, **options}
    return GrpcFM(f"127.0.0.1:{server.port}", GrpcFMOptions(**options))


def test_outputs_match_in_process_fm(fm):
    images, points = _query(b=3)
    reference = fm.segment(images, points)
    with serving(fm) as server:
        spec = f"grpc://127.0.0.1:{server.port}?deadline=20&retries=0"
        with load_fm(spec) as remote:
            out = remote.segment(images, points)
            assert out.dtype == np.float32 and out.shape == (3, 48, 40)
            np.testing.assert_array_equal(out, reference)
            assert (remote.meter.calls, remote.meter.images) == (1, 3)  # its own local meter
        with load_fm(spec + "&png=1") as remote:
            np.testing.assert_array_equal(remote.segment(images, points), reference)
        with load_fm(spec + "&dtype=float16&png=1") as remote:
            half = remote.segment(images, points)
        assert half.dtype == np.float32
        np.testing.assert_allclose(half, reference, rtol=1e-3, atol=1e-3 * np.abs(reference).max())
        assert not np.array_equal(half, reference)  # it did travel as float16


def test_a_long_query_goes_as_requests_of_max_images_each(fm):
    """Each request has its own deadline: a slow FM's evaluation chunk is not cut off."""
    images, points = _query(b=7)
    parts = [slice(0, 3), slice(3, 6), slice(6, 7)]  # the same forward passes as the service's
    reference = np.concatenate([fm.segment(images[p], points[p]) for p in parts])
    with serving(fm, max_batch=1) as server:
        with load_fm(f"grpc://127.0.0.1:{server.port}?deadline=20&retries=0&max_images=3") as c:
            np.testing.assert_array_equal(c.segment(images, points), reference)
            assert (c.meter.calls, c.meter.images) == (1, 7)  # one query to the site
        assert server.stats().requests == 3  # 3 + 3 + 1 images on the wire
        assert server.ledger.usage("anonymous").images == 7
    with pytest.raises(GrpcSpecError, match="max_images >= 1"):
        parse_grpc_spec("grpc://127.0.0.1:1?max_images=0")


def test_tokens_are_required_and_usage_is_metered(fm, tmp_path):
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(TOKENS)
    metering = tmp_path / "metering.json"
    images, points = _query(b=2)
    with serving(fm, tokens=tokens, metering=metering) as server:
        with _client(server) as anonymous, pytest.raises(FMAuthError, match="missing token"):
            anonymous.segment(images, points)
        with _client(server, token="guess") as wrong, pytest.raises(FMAuthError, match="unknown"):
            wrong.segment(images, points)
        with _client(server, token="token-a-0123456789") as good:
            good.segment(images, points)
            assert good.health() == "SERVING"
    doc = json.loads(metering.read_text())  # written at shutdown
    usage = doc["clients"]["hospital-a"]
    assert (usage["calls"], usage["images"], usage["refused"]) == (1, 2, 0)
    assert usage["seconds"] > 0
    assert doc["batching"]["images"] == 2


def test_quota_is_enforced_and_survives_a_restart(fm, tmp_path):
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(TOKENS)
    metering = tmp_path / "metering.json"
    images, points = _query(b=3)
    with serving(fm, tokens=tokens, metering=metering) as server:
        with _client(server, token="token-a-0123456789") as client:
            client.segment(images, points)
            with pytest.raises(RemoteQuotaExceeded, match="quota of 4 images") as err:
                client.segment(images, points)
            assert isinstance(err.value, QueryBudgetExceeded)
            client.segment(images[:1], points[:1])  # exactly up to the quota is fine
    with serving(fm, tokens=tokens, metering=metering) as server:  # usage read back
        with _client(server, token="token-a-0123456789") as client:
            with pytest.raises(RemoteQuotaExceeded, match="4 used"):
                client.segment(images[:1], points[:1])


def test_rate_limit_refuses_then_retry_waits(fm, tmp_path):
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(TOKENS)
    images, points = _query(b=2)
    with serving(fm, tokens=tokens) as server:
        with _client(server, token="token-b-0123456789") as client:
            client.segment(images, points)  # the 2-image burst
            with pytest.raises(FMRateLimited, match="2 images/s"):
                client.segment(images, points)
        with _client(server, token="token-b-0123456789", retries=3) as patient:
            start = time.monotonic()
            patient.segment(images[:1], points[:1])  # waits for the bucket to refill
            assert time.monotonic() - start < 5


def test_client_survives_a_server_restart(small_sam, fm):
    images, points = _query(b=1)
    reference = fm.segment(images, points)
    first = FMServer(fm, ServeConfig(port=0))
    port = first.start()
    second: FMServer | None = None
    restarter: threading.Thread | None = None
    try:
        with GrpcFM(f"127.0.0.1:{port}", GrpcFMOptions(deadline_s=10, retries=8)) as client:
            np.testing.assert_array_equal(client.segment(images, points), reference)
            first.stop(grace_s=1.0)

            def restart() -> None:
                nonlocal second
                time.sleep(1.0)
                second = FMServer(
                    TorchSamFM(BatchedSam(small_sam), "again"), ServeConfig(port=port)
                )
                second.start()

            restarter = threading.Thread(target=restart)
            restarter.start()
            np.testing.assert_array_equal(client.segment(images, points), reference)
            restarter.join(timeout=10)
            assert second is not None and second.stats().requests == 1
    finally:
        first.stop(grace_s=1.0)
        if restarter is not None:
            restarter.join(timeout=10)
        if second is not None:
            second.stop(grace_s=1.0)


def test_unreachable_service_is_a_clear_error():
    with GrpcFM("127.0.0.1:1", GrpcFMOptions(deadline_s=5, retries=1, backoff_s=0.05)) as c:
        with pytest.raises(FMUnavailable, match="fm serve"):
            c.segment(*_query(b=1))


def _valid_request(pb2, b: int = 2):
    images, points = _query(b=b)
    return codec.encode_request(pb2.SegmentRequest(), images, points, None, False, "float32")


def _breakers():
    def raw_3d(r):
        r.images.raw.shape[:] = [2, 48, 120]

    def short_bytes(r):
        r.images.raw.data = r.images.raw.data[:-1]

    def float_points(r):
        r.points.dtype = codec.FLOAT16

    def empty(r):
        r.images.raw.shape[:] = [0, 48, 40, 3]
        r.images.raw.data = b""
        r.points.shape[:] = [0, 1, 2]
        r.points.data = b""

    def bad_png(r):
        r.images.png.png.extend([b"\x89PNG\r\n\x1a\nnot really", b"junk"])

    def points_mismatch(r):
        r.points.shape[:] = [1, 2, 2]

    def outside(r):
        codec.fill_tensor(r.points, np.full((2, 1, 2), 500.0), codec.FLOAT32)

    def out_dtype(r):
        r.output_dtype = codec.UINT8

    def no_images(r):
        r.ClearField("images")

    def bad_labels(r):
        codec.fill_tensor(r.labels, np.full((2, 1), 7), codec.INT32)

    return [
        (raw_3d, "shape"),
        (short_bytes, "bytes but shape"),
        (float_points, "points must be float32"),
        (empty, "empty query"),
        (bad_png, "cannot be decoded"),
        (points_mismatch, r"\[B,N,2\]"),
        (outside, "outside the 40x48 image"),
        (out_dtype, "output_dtype"),
        (no_images, "images missing"),
        (bad_labels, "labels must be 1"),
    ]


def test_malformed_requests_are_invalid_argument_and_server_keeps_serving(fm):
    pb2, pb2_grpc = protos.load()
    with serving(fm) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb2_grpc.FMServiceStub(channel)
        for breaker, message in _breakers():
            request = _valid_request(pb2)
            breaker(request)
            with pytest.raises(grpc.RpcError) as err:
                stub.Segment(request, timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, breaker.__name__
            assert re.search(message, err.value.details()), (breaker.__name__, err.value.details())
        reply = stub.Segment(_valid_request(pb2), timeout=10)
        assert list(reply.logits.shape) == [2, 48, 40]
    with serving(fm) as server, _client(server) as client:  # and as a Python error
        with pytest.raises(FMInputError, match="rejected"):
            images, points = _query(b=2)  # labels of the wrong shape, past the client's checks
            client._segment(Query(images, points, np.full((1, 1), 1, dtype=np.int64), None))


class _SlowFM(BlackboxFM):
    """Wraps an FM with a fixed delay per call, so concurrent requests pile up behind it."""

    def __init__(self, inner: BlackboxFM, delay_s: float) -> None:
        super().__init__()
        self.inner, self.delay_s, self.name = inner, delay_s, "slow"
        self.prompt_kinds = inner.prompt_kinds
        self.entered = threading.Event()

    def _segment(self, q):
        self.entered.set()
        time.sleep(self.delay_s)
        return self.inner.segment(q.images, q.points, q.labels, q.boxes)


def test_concurrent_requests_are_micro_batched_and_split_back(fm):
    shapes = [(2, 48, 40), (2, 48, 40), (1, 48, 40), (2, 32, 32)]  # the last can't be merged
    queries = [_query(*shape, seed=i) for i, shape in enumerate(shapes)]
    references = [fm.segment(images, points) for images, points in queries]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    with serving(_SlowFM(fm, 0.2), max_batch=16, batch_wait_ms=300) as server:
        barrier = threading.Barrier(len(queries))

        def site(i: int) -> None:
            try:
                with _client(server) as client:
                    barrier.wait(timeout=10)
                    results[i] = client.segment(*queries[i])
            except BaseException as err:  # reported by the main thread
                errors.append(err)

        threads = [threading.Thread(target=site, args=(i,)) for i in range(len(queries))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        stats = server.stats()
    assert not errors, errors
    for i, reference in enumerate(references):
        np.testing.assert_allclose(results[i], reference, rtol=1e-4, atol=1e-5)
    assert stats.requests == 4 and stats.images == 7
    assert stats.merged_calls >= 1 and stats.max_requests_per_call >= 2
    assert stats.fm_calls < 4


def test_shutdown_finishes_in_flight_requests(fm):
    images, points = _query(b=1)
    slow = _SlowFM(fm, 1.0)
    server = FMServer(slow, ServeConfig(port=0))
    server.start()
    result: list[np.ndarray] = []
    try:
        with _client(server) as client:
            t = threading.Thread(target=lambda: result.append(client.segment(images, points)))
            t.start()
            assert slow.entered.wait(timeout=10)  # the request is now inside the slow FM
            server.stop(grace_s=5.0)
            t.join(timeout=10)
    finally:
        server.stop(grace_s=1.0)
    assert len(result) == 1 and result[0].shape == (1, 48, 40)


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR header declares width x height RGB pixels (its data is one row)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x00" * 3 * min(width, 16))
    return codec.PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _png_request(pb2, pngs: list[bytes]):
    request = pb2.SegmentRequest()
    request.images.png.png.extend(pngs)
    codec.fill_tensor(request.points, np.full((len(pngs), 1, 2), 1.0), codec.FLOAT32)
    return request


def test_png_declaring_huge_dimensions_is_refused_before_decoding(fm, monkeypatch):
    pb2, pb2_grpc = protos.load()
    bomb = _png_declaring(20000, 20000)
    assert len(bomb) < 200  # the message limit alone lets it through
    real = codec.decode_png

    def no_decoding(*args, **kwargs):
        raise AssertionError("pixels decoded before the declared size was checked")

    monkeypatch.setattr(codec, "decode_png", no_decoding)
    limit = codec.max_pixels_for(64 * 1024 * 1024)
    with pytest.raises(codec.RequestError, match=r"20000x20000 = 400000000 pixels"):
        codec.decode_request(_png_request(pb2, [bomb]), limit)
    small = codec.encode_png(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(codec.RequestError, match="must share H, W"):  # sizes checked first too
        codec.decode_request(_png_request(pb2, [small, _png_declaring(9, 8)]), limit)
    with pytest.raises(codec.RequestError, match="B=3"):
        codec.decode_request(_bad_batch(pb2, small), limit)
    monkeypatch.setattr(codec, "decode_png", real)

    # A genuine, highly compressible 2000x2000 PNG (~12 MB decoded) under a 1 MB server limit.
    flat = codec.encode_png(np.zeros((2000, 2000, 3), np.uint8), compress_level=9)
    assert len(flat) < 100_000
    with serving(fm, max_message_mb=1.0) as server:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb2_grpc.FMServiceStub(channel)
            for png, shown in ((bomb, "20000x20000"), (flat, "2000x2000")):
                with pytest.raises(grpc.RpcError) as err:
                    stub.Segment(_png_request(pb2, [png]), timeout=10)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert shown in err.value.details() and "fewer or smaller" in err.value.details()
            ok = _png_request(pb2, [codec.encode_png(_query(b=1)[0][0])])
            assert list(stub.Segment(ok, timeout=10).logits.shape) == [1, 48, 40]


def _bad_batch(pb2, png: bytes):
    """Two PNGs, but points for three images."""
    request = _png_request(pb2, [png, png])
    codec.fill_tensor(request.points, np.full((3, 1, 2), 1.0), codec.FLOAT32)
    return request


def test_batcher_shutdown_never_strands_a_job(fm):
    images, points = _query(b=1)
    labels = np.ones((1, 1), np.int64)

    # A job queued on a batcher whose worker never ran fails at stop, instead of hanging.
    idle = MicroBatcher(fm)
    job = idle.submit(images, points, labels)
    idle.stop()
    with pytest.raises(BatcherClosed, match="shutting down"):
        job.future.result(timeout=5)
    with pytest.raises(BatcherClosed, match="shutting down"):  # and later submits fail at once
        idle.submit(images, points, labels)

    # The race: stop() lands between submit's check and its put. The job must still be run.
    batcher = MicroBatcher(fm, wait_s=0.0)
    batcher.start()
    real_put = batcher._queue.put
    stopper = threading.Thread(target=batcher.stop)

    def put_after_stop(item, *args, **kwargs):
        stopper.start()
        stopper.join(timeout=1.0)  # before the fix the worker exits here; after, stop() waits
        real_put(item, *args, **kwargs)

    batcher._queue.put = put_after_stop
    job = batcher.submit(images, points, labels)
    assert job.future.result(timeout=10).shape == (1, 48, 40)
    stopper.join(timeout=10)
    assert not stopper.is_alive()
    with pytest.raises(BatcherClosed):
        batcher.submit(images, points, labels)


def _self_signed_ca_and_server(tmp: Path) -> tuple[Path, Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def cert(subject, issuer, public_key, signing_key, ca: bool, san=None):
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(signing_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = cert("baps test CA", "baps test CA", ca_key.public_key(), ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server_cert = cert("localhost", "baps test CA", key.public_key(), ca_key, False, san)
    pem = serialization.Encoding.PEM
    paths = tmp / "ca.pem", tmp / "server.pem", tmp / "server.key"
    paths[0].write_bytes(ca_cert.public_bytes(pem))
    paths[1].write_bytes(server_cert.public_bytes(pem))
    paths[2].write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def test_tls_with_a_private_ca(fm, tmp_path):
    ca, cert, key = _self_signed_ca_and_server(tmp_path)
    images, points = _query(b=2)
    reference = fm.segment(images, points)
    with serving(fm, tls_cert=cert, tls_key=key) as server:
        spec = f"grpc://127.0.0.1:{server.port}?tls_ca={ca}&deadline=20&retries=0"
        with load_fm(spec) as remote:
            np.testing.assert_array_equal(remote.segment(images, points), reference)
        with _client(server, deadline_s=5) as plaintext, pytest.raises(FMUnavailable):
            plaintext.segment(images, points)


def test_oversize_request_and_reply_say_what_to_do(fm):
    with serving(fm, max_message_mb=0.05) as server, _client(server) as client:  # ~52 KB
        with pytest.raises(FMMessageTooLarge, match="fewer images"):
            client.segment(*_query(b=1, h=200, w=200))  # 120 KB of raw image
        with pytest.raises(FMMessageTooLarge, match="max-message-mb"):
            client.segment(*_query(b=1, h=120, w=120))  # 43 KB in, 58 KB of logits out
        assert client.segment(*_query(b=1, h=64, w=64)).shape == (1, 64, 64)


def test_grpc_spec_options(monkeypatch, tmp_path):
    monkeypatch.setenv("SITE_TOKEN", "from-env")
    target, o = parse_grpc_spec("grpc://fm.example:7000?token_env=SITE_TOKEN&dtype=float16&png=1")
    assert (target, o.token, o.dtype, o.png, o.tls) == (
        "fm.example:7000",
        "from-env",
        "float16",
        True,
        False,
    )
    (tmp_path / "tok").write_text("from-file\n")
    _, o = parse_grpc_spec(f"grpc://h:1?token_file={tmp_path / 'tok'}&tls=1&retries=2&deadline=3")
    assert (o.token, o.tls, o.retries, o.deadline_s) == ("from-file", True, 2, 3.0)
    for bad in ("grpc://h", "grpc://h:1?dtype=int8", "grpc://h:1?token=a&token_env=SITE_TOKEN"):
        with pytest.raises(GrpcSpecError):
            parse_grpc_spec(bad)


def test_tokens_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "tokens.toml"
    bad.write_text('[[client]]\nname = "a"\ntoken = "x"\nquota = 3\n')
    with pytest.raises(TokensFileError, match=r"tokens.toml, client #1: unknown keys \['quota'\]"):
        load_tokens(bad)
    good = tmp_path / "tokens.json"
    good.write_text(json.dumps({"client": [{"name": "a", "token": "x", "quota_images": 3}]}))
    assert [p.name for p in load_tokens(good).values()] == ["a"]


def test_generated_code_builds_concurrently_and_falls_back(tmp_path, monkeypatch):
    code = (
        "import sys; from pathlib import Path; from baps_fed.fm.service import protos; "
        "print(protos._build_in(Path(sys.argv[1]), protos._cache_key()))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE)
        for _ in range(3)
    ]
    try:
        outs = [p.communicate(timeout=60)[0].decode().strip() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs)
    assert len(set(outs)) == 1 and (Path(outs[0]) / "COMPLETE").is_file()
    assert len(list(tmp_path.iterdir())) == 1  # the losers' temporary copies are gone
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setattr(protos, "_cache_roots", lambda: [blocker / "sub", tmp_path / "user"])
    assert protos.generated_dir().parent == tmp_path / "user"


def test_cli_fm_serve_drains_on_sigterm(small_sam, tmp_path):
    weights = tmp_path / "small.pt"
    save_tiny_weights(weights, small_sam, SMALL_ARCH, {})
    metering = tmp_path / "metering.json"
    cmd = [
        sys.executable, "-m", "baps_fed.cli", "fm", "serve", "--fm", f"tiny:{weights}",
        "--port", "0", "--metering", str(metering), "--batch-wait-ms", "1",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        port = None
        deadline = time.monotonic() + 90
        while port is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            match = re.search(r"on 127\.0\.0\.1:(\d+)", line)
            port = int(match.group(1)) if match else None
        assert port is not None, "fm serve did not report its port"
        with load_fm(f"grpc://127.0.0.1:{port}?deadline=30&retries=0") as remote:
            assert remote.segment(*_query(b=2)).shape == (2, 48, 40)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert "SIGTERM" in out and "1 requests" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert json.loads(metering.read_text())["clients"]["anonymous"]["images"] == 2
