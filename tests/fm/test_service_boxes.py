"""Box prompts through the FM service: real servers on 127.0.0.1 (helpers of test_service.py)."""

from __future__ import annotations

import re
import threading

import grpc
import numpy as np
import pytest

from baps_fed.fm.contract import BlackboxFM
from baps_fed.fm.errors import FMInputError
from baps_fed.fm.sam_batched import BatchedSam
from baps_fed.fm.service import codec, protos
from baps_fed.fm.service.batcher import MicroBatcher
from baps_fed.fm.service.server import _Servicer
from baps_fed.fm.spec import load_fm
from baps_fed.fm.torch_fm import TorchSamFM
from tests.fm.test_service import _client, _query, _SlowFM, serving

BOX_ONLY = frozenset({"box"})


@pytest.fixture
def fm(small_sam) -> TorchSamFM:
    return TorchSamFM(BatchedSam(small_sam), "small")


def _boxes(b: int = 2, h: int = 48, w: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed + 100)
    x0, y0 = rng.uniform(0, w / 2, b), rng.uniform(0, h / 2, b)
    x1, y1 = x0 + rng.uniform(4, w / 2, b), y0 + rng.uniform(4, h / 2, b)
    return np.stack([x0, y0, x1, y1], -1).astype(np.float32)


def test_box_queries_match_the_local_fm_bit_for_bit(fm):
    images, points = _query(b=3)
    boxes = _boxes(b=3)
    by_box = fm.segment(images, boxes=boxes)
    by_both = fm.segment(images, points, boxes=boxes)
    assert not np.array_equal(by_box, by_both)  # the points do count
    with serving(fm) as server:
        spec = f"grpc://127.0.0.1:{server.port}?deadline=20&retries=0"
        for options in ("", "&png=1"):
            with load_fm(spec + options) as remote:
                assert remote.prompt_kinds == {"point", "box"}
                np.testing.assert_array_equal(remote.segment(images, boxes=boxes), by_box)
                np.testing.assert_array_equal(remote.segment(images, points, boxes=boxes), by_both)
                labels = np.zeros((3, 1), np.int64)
                np.testing.assert_array_equal(
                    remote.segment(images, points, labels, boxes),
                    fm.segment(images, points, labels, boxes),
                )


def test_a_points_only_request_of_an_old_client_still_works(fm):
    pb2, pb2_grpc = protos.load()
    images, points = _query(b=2)
    request = pb2.SegmentRequest()  # as a client from before boxes fills it
    codec.fill_images(request.images, images, png=False)
    codec.fill_tensor(request.points, points, codec.FLOAT32)
    assert not request.HasField("boxes")
    with serving(fm) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        reply = pb2_grpc.FMServiceStub(channel).Segment(request, timeout=10)
    np.testing.assert_array_equal(codec.read_logits(reply.logits), fm.segment(images, points))


def _box_request(pb2, boxes: np.ndarray, b: int = 2, png: bool = False):
    images, _ = _query(b=b)
    request = pb2.SegmentRequest()
    return codec.encode_request(request, images, None, None, png, "float32", boxes)


BAD_BOXES = [
    (np.array([[1, 1, 10, 10, 5], [1, 1, 10, 10, 5]]), r"boxes must have shape \[B,4\] = \[2,4\]"),
    (np.array([[1, 1, 10, 10]]), r"boxes must have shape \[B,4\] = \[2,4\]"),
    (np.array([[1, 1, 10, 10], [np.nan, 1, 10, 10]]), "box of image 1 contains NaN"),
    (np.array([[1, 1, 10, 10], [20, 1, 10, 10]]), "box of image 1 is inverted"),
    (np.array([[1, 1, 10, 60], [1, 1, 10, 10]]), "box of image 0 .* leaves the 40x48 image"),
    (np.zeros((2, 1, 4)), r"boxes must be a 2-d array \[B,4\]"),
]


def test_a_bad_box_is_invalid_argument_naming_what_is_wrong(fm):
    pb2, pb2_grpc = protos.load()
    with serving(fm) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb2_grpc.FMServiceStub(channel)
        for boxes, message in BAD_BOXES:
            with pytest.raises(grpc.RpcError) as err:
                stub.Segment(_box_request(pb2, boxes), timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, message
            assert re.search(message, err.value.details()), (message, err.value.details())
        with pytest.raises(grpc.RpcError) as err:  # three PNGs, boxes for two images
            stub.Segment(_box_request(pb2, _boxes(b=2), b=3, png=True), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "boxes have shape [B,4] with B=2" in err.value.details()
        no_prompt = _box_request(pb2, _boxes())
        no_prompt.ClearField("boxes")
        with pytest.raises(grpc.RpcError, match="needs a prompt") as err:
            stub.Segment(no_prompt, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        reply = stub.Segment(_box_request(pb2, _boxes()), timeout=10)  # still serving
        assert list(reply.logits.shape) == [2, 48, 40]
    assert server.stats().requests == 1  # nothing bad reached the FM


def test_a_box_only_fm_behind_the_service(small_sam):
    box_only = TorchSamFM(BatchedSam(small_sam), "/private/medsam.pth", prompt_kinds=BOX_ONLY)
    images, points = _query(b=2)
    boxes = _boxes(b=2)
    with serving(box_only) as server, _client(server) as client:
        assert client.prompt_kinds == {"box"}
        np.testing.assert_array_equal(
            client.segment(images, boxes=boxes), box_only.segment(images, boxes=boxes)
        )
        for args in ((images, points), (images, points, None, boxes)):
            with pytest.raises(FMInputError, match=r"does not accept point prompts.*send boxes"):
                client.segment(*args)  # refused by the client, as by any box-only FM
        pb2, pb2_grpc = protos.load()  # a raw request is refused by the server itself
        request = codec.encode_request(pb2.SegmentRequest(), images, points, None, False, "float32")
        stub = pb2_grpc.FMServiceStub(client._channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Segment(request, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = err.value.details()
        assert "does not accept point prompts; it accepts: box; send boxes" in details
        assert "medsam" not in details  # the FM's own name stays on the server
        assert client.meter.images == 2 and server.stats().images == 2


def test_a_server_without_describe_takes_points_only(fm, monkeypatch):
    _, pb2_grpc = protos.load()  # the generated base answers UNIMPLEMENTED, as an old server
    monkeypatch.setattr(_Servicer, "Describe", pb2_grpc.FMServiceServicer.Describe)
    images, points = _query(b=1)
    with serving(fm) as server, _client(server) as client:
        assert client.prompt_kinds == {"point"}
        np.testing.assert_array_equal(client.segment(images, points), fm.segment(images, points))
        with pytest.raises(FMInputError, match="does not accept box prompts"):
            client.segment(images, boxes=_boxes(b=1))


def _mixed_queries():
    """(images, points, labels, boxes) of the same image size, with different prompt kinds."""
    out = []
    for i, (b, kinds) in enumerate(
        [(2, "box"), (1, "point"), (1, "box"), (2, "both"), (1, "both"), (2, "point")]
    ):
        images, points = _query(b=b, seed=i)
        boxes = _boxes(b=b, seed=i)
        out.append(
            (
                images,
                None if kinds == "box" else points,
                None if kinds == "box" else np.ones((b, 1), np.int64),
                None if kinds == "point" else boxes,
            )
        )
    return out


class _Recording(BlackboxFM):
    """Records the prompt kinds and batch size of every call to the FM it wraps."""

    def __init__(self, inner: BlackboxFM) -> None:
        super().__init__()
        self.inner, self.name, self.prompt_kinds = inner, "recording", inner.prompt_kinds
        self.calls: list[tuple[tuple[str, ...], int]] = []

    def _segment(self, q):
        self.calls.append((q.kinds, q.images.shape[0]))
        return self.inner.segment(q.images, q.points, q.labels, q.boxes)


def test_the_batcher_merges_only_equal_prompt_kinds_and_isolates_a_bad_box(fm):
    queries = _mixed_queries()
    bad = list(queries[2])
    bad[3] = np.array([[30, 5, 10, 20]], np.float32)  # inverted: only the FM's check sees it
    queries.append(tuple(bad))
    recording = _Recording(fm)
    batcher = MicroBatcher(recording, max_batch=16, wait_s=0.0)
    jobs = [batcher.submit(*q) for q in queries]  # all queued before the worker starts
    batcher.start()
    try:
        results = [job.future.exception(timeout=30) or job.future.result() for job in jobs]
    finally:
        batcher.stop()
    assert isinstance(results[-1], FMInputError) and "inverted" in str(results[-1])
    for query, result in zip(queries[:-1], results[:-1], strict=True):
        np.testing.assert_allclose(result, fm.segment(*query), rtol=1e-4, atol=1e-5)
    # point (1+2 images) and box+point (2+1) merged, never two kinds in one call; the box jobs
    # (2, 1 and the bad 1) were merged, refused as a whole, then run one by one
    assert sorted(recording.calls) == [
        (("box",), 1),
        (("box",), 2),
        (("point",), 3),
        (("point", "box"), 3),
    ]
    stats = batcher.stats()
    assert (stats.requests, stats.fm_calls, stats.merged_calls) == (6, 4, 2)


def test_concurrent_box_and_point_requests_each_get_their_own_answer(fm):
    queries = _mixed_queries()
    references = [fm.segment(*q) for q in queries]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    with serving(_SlowFM(fm, 0.2), max_batch=16, batch_wait_ms=300) as server:
        barrier = threading.Barrier(len(queries))

        def site(i: int) -> None:
            try:
                with _client(server) as client:
                    assert client.prompt_kinds == {"point", "box"}
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
    assert stats.requests == 6 and stats.images == 9
    assert stats.merged_calls >= 1 and 3 <= stats.fm_calls < 6
