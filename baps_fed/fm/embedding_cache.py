"""Encode once: a bounded LRU of image embeddings, keyed by the exact encoder input.

A SAM-family FM spends nearly all of a query in its image encoder (LiteMedSAM on 2 CPU cores:
TinyViT ~94 % of a box query), while BAPS sends the same images again and again with other
prompts: box refinement, a private box head, zero-shot scoring, every validation and test pass.
Segment Anything is built for this (``SamPredictor.set_image`` once, ``predict`` many times).

The key is a BLAKE2b digest of the preprocessed tensor the encoder would see (its dtype, shape
and bytes), so a changed pixel is a different key and two FM families never share entries.
Entries are cloned embeddings (never views of a batch, which would keep the whole batch alive);
the least recently used go first once ``max_bytes`` is reached; an entry larger than the bound is
not kept. Scopes keep tenants apart: each scope (the client's name from the tokens file on the
FM service, ``""`` in a
local process) has its own LRU with its own bound, so one tenant's request is never answered
from, nor can it evict or time-probe, another tenant's embeddings.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import asdict, astuple, dataclass

import torch

MB = 1024 * 1024


def embedding_key(x: torch.Tensor) -> bytes:
    """Digest of one encoder input [3,S,S]: dtype, shape and the exact bytes."""
    a = x.detach().contiguous().cpu().numpy()
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(memoryview(a).cast("B"))
    return h.digest()


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    entries: int = 0
    bytes: int = 0
    peak_bytes: int = 0
    max_bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def __add__(self, other: CacheStats) -> CacheStats:
        return CacheStats(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))


class EmbeddingCache:
    """One scope's LRU of embeddings, bounded by bytes; safe to share between threads."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"cache bound must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self._stats = CacheStats(max_bytes=max_bytes)

    def get(self, key: bytes) -> torch.Tensor | None:
        with self._lock:
            emb = self._entries.get(key)
            if emb is None:
                self._stats.misses += 1
                return None
            self._entries.move_to_end(key)
            self._stats.hits += 1
            return emb

    def put(self, key: bytes, embedding: torch.Tensor) -> None:
        size = embedding.numel() * embedding.element_size()
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return
            s = self._stats
            while self._entries and s.bytes + size > self.max_bytes:
                _, old = self._entries.popitem(last=False)
                s.bytes -= old.numel() * old.element_size()
                s.evictions += 1
            self._entries[key] = embedding.detach().clone()
            s.bytes += size
            s.peak_bytes = max(s.peak_bytes, s.bytes)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(**self._stats.as_dict() | {"entries": len(self._entries)})

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._stats.bytes = 0


class ScopedEmbeddingCaches:
    """One ``EmbeddingCache`` per scope, each bounded by ``max_bytes_per_scope``."""

    def __init__(self, max_bytes_per_scope: int) -> None:
        self.max_bytes_per_scope = max_bytes_per_scope
        self._caches: dict[str, EmbeddingCache] = {}
        self._lock = threading.Lock()

    def scope(self, name: str) -> EmbeddingCache:
        with self._lock:
            cache = self._caches.get(name)
            if cache is None:
                cache = self._caches[name] = EmbeddingCache(self.max_bytes_per_scope)
            return cache

    def stats(self, name: str | None = None) -> CacheStats:
        """One scope's counts, or all scopes added up (peak: the sum of each scope's peak)."""
        with self._lock:
            caches = list(self._caches.values()) if name is None else [self._caches.get(name)]
        total = CacheStats(max_bytes=0)
        for cache in caches:
            if cache is not None:
                total = total + cache.stats()
        return total
