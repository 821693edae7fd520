"""A black box around a local segment-anything model: the FM a hospital could host itself.

A query runs as encoder input (the family's preprocessing) -> image embeddings -> prompt
encoder and mask decoder -> logits. The embeddings come from the embedding cache where the
exact encoder input was seen before (``embedding_cache.py``), else from the image encoder: the
torch module, or a faster runtime for it (``runtime.py``). Images a chunk misses are encoded in
one pass; the decoder always runs on the whole chunk, as without the cache.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch

from baps_fed.fm.contract import BlackboxFM, Query
from baps_fed.fm.embedding_cache import CacheStats, ScopedEmbeddingCaches, embedding_key
from baps_fed.fm.errors import FMInputError
from baps_fed.fm.sam_batched import BatchedSam

# Images per forward pass when none is given. On 2 CPU cores the tiny FM ran 3x faster in
# chunks of 8 than in one pass of 64 (simulations/results/fm_throughput.md: a large batch's
# attention maps leave the cache); a GPU wants large batches.
DEFAULT_MAX_BATCH = {"cpu": 8, "cuda": 64}
DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}

Encoder = Callable[[torch.Tensor], torch.Tensor]


class TorchSamFM(BlackboxFM):
    """Runs a ``BatchedSam`` without gradients, in chunks of ``max_batch`` images.

    ``cache_bytes``: bound of each scope's embedding cache (0: no cache). ``dtype``: autocast
    precision of the forward (``bfloat16`` on a GPU; float32 is the exact reference).
    ``encoder``: what turns encoder input into embeddings (default: the model's own module).
    """

    def __init__(
        self,
        model: BatchedSam,
        name: str,
        device: str = "cpu",
        max_batch: int | None = None,
        budget_images: int | None = None,
        prompt_kinds: frozenset[str] = frozenset({"point", "box"}),
        prompt_note: str = "",
        cache_bytes: int = 0,
        dtype: str = "float32",
        encoder: Encoder | None = None,
    ) -> None:
        super().__init__(budget_images=budget_images)
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.prompt_kinds = prompt_kinds
        self.prompt_note = prompt_note
        self.model = model.to(device).eval()
        self.name = name
        self.device = torch.device(device)
        self.max_batch = max_batch or DEFAULT_MAX_BATCH.get(self.device.type, 8)
        self.dtype = dtype
        self.encoder: Encoder = encoder or model.sam.image_encoder
        self.caches = ScopedEmbeddingCaches(cache_bytes) if cache_bytes > 0 else None

    @property
    def img_size(self) -> int:
        return self.model.img_size

    def cache_stats(self, scope: str | None = None) -> CacheStats:
        """Counts of one scope's cache, or of all scopes (zeros when the cache is off)."""
        return self.caches.stats(scope) if self.caches is not None else CacheStats()

    def usage(self) -> dict[str, float]:
        cache = self.cache_stats()
        return super().usage() | {
            "cache_bytes": cache.bytes,
            "cache_peak_bytes": cache.peak_bytes,
            "cache_max_bytes": cache.max_bytes,
            "cache_evictions": cache.evictions,
        }

    def check_shape(self, h: int, w: int) -> None:
        """SAM scales the longest side to its input size: an image so thin that its short side
        would vanish cannot be answered (the query's fault, not the FM's)."""
        rh, rw = self.model.resized_shape(h, w)
        if min(rh, rw) < 1:
            raise FMInputError(
                f"a {w}x{h} image scales to {rw}x{rh} at this FM's {self.img_size} px input: "
                "its short side vanishes; pad or crop it to a less extreme aspect ratio"
            )

    def _autocast(self) -> contextlib.AbstractContextManager:
        low = DTYPES[self.dtype]
        if low is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=low)

    @torch.inference_mode()
    def _segment(self, query: Query) -> np.ndarray:
        self.check_shape(*query.images.shape[1:3])
        hw = query.images.shape[1:3]
        out = []
        for i in range(0, query.images.shape[0], self.max_batch):
            part = slice(i, i + self.max_batch)
            images = self._tensor(query.images[part]).permute(0, 3, 1, 2).float()
            p, lab, box = (
                None if a is None else self._tensor(a[part])
                for a in (query.points, query.labels, query.boxes)
            )
            scopes = query.scopes[part] if query.scopes is not None else None
            # the family's preprocessing stays float32 (its resizes are matmuls that autocast
            # would run in low precision): the exact encoder input, also as the cache's key
            x = self.model.prepare(images)
            with self._autocast():
                embeddings = self._embeddings(x, scopes)
                masks, iou = self.model.decode(embeddings, p, lab, hw, box)
                logits = self.model.upscale(self.model.select(masks, iou), hw)
            out.append(logits.float().cpu().numpy())
        return np.concatenate(out, axis=0)

    def _embeddings(self, x: torch.Tensor, scopes: tuple[str, ...] | None) -> torch.Tensor:
        """Embeddings of a chunk's encoder inputs: cached ones looked up, the rest encoded in
        one pass (all of them when the cache is off: the reference computation)."""
        if self.caches is None:
            return self.encoder(x)
        scopes = scopes or ("",) * x.shape[0]
        ids = [(scope, embedding_key(xi)) for scope, xi in zip(scopes, x, strict=True)]
        first: dict[tuple[str, bytes], int] = {}  # each distinct image once: SPSA sends 2K
        for i, image_id in enumerate(ids):  # copies of its batch in one call
            first.setdefault(image_id, i)
        found = {image_id: self.caches.scope(image_id[0]).get(image_id[1]) for image_id in first}
        missing = [image_id for image_id, e in found.items() if e is None]
        self.meter.cache_misses += len(missing)
        self.meter.cache_hits += x.shape[0] - len(missing)
        if missing:
            encoded = self.encoder(x[[first[image_id] for image_id in missing]])
            for image_id, embedding in zip(missing, encoded, strict=True):
                found[image_id] = embedding
                self.caches.scope(image_id[0]).put(image_id[1], embedding)
        return torch.stack([found[image_id] for image_id in ids])  # type: ignore[misc]

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(self.device)
