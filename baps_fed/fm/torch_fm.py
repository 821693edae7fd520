"""A black box around a local segment-anything model: the FM a hospital could host itself."""

from __future__ import annotations

import numpy as np
import torch

from baps_fed.fm.contract import BlackboxFM, Query
from baps_fed.fm.errors import FMInputError
from baps_fed.fm.sam_batched import BatchedSam

# Images per forward pass when none is given. On 2 CPU cores the tiny FM ran 3x faster in
# chunks of 8 than in one pass of 64 (simulations/results/fm_throughput.md: a large batch's
# attention maps leave the cache); a GPU wants large batches.
DEFAULT_MAX_BATCH = {"cpu": 8, "cuda": 64}


class TorchSamFM(BlackboxFM):
    """Runs a ``BatchedSam`` without gradients, in chunks of ``max_batch`` images."""

    def __init__(
        self,
        model: BatchedSam,
        name: str,
        device: str = "cpu",
        max_batch: int | None = None,
        budget_images: int | None = None,
        prompt_kinds: frozenset[str] = frozenset({"point", "box"}),
        prompt_note: str = "",
    ) -> None:
        super().__init__(budget_images=budget_images)
        self.prompt_kinds = prompt_kinds
        self.prompt_note = prompt_note
        self.model = model.to(device).eval()
        self.name = name
        self.device = torch.device(device)
        self.max_batch = max_batch or DEFAULT_MAX_BATCH.get(self.device.type, 8)

    @property
    def img_size(self) -> int:
        return self.model.img_size

    def check_shape(self, h: int, w: int) -> None:
        """SAM scales the longest side to its input size: an image so thin that its short side
        would vanish cannot be answered (the query's fault, not the FM's)."""
        rh, rw = self.model.resized_shape(h, w)
        if min(rh, rw) < 1:
            raise FMInputError(
                f"a {w}x{h} image scales to {rw}x{rh} at this FM's {self.img_size} px input: "
                "its short side vanishes; pad or crop it to a less extreme aspect ratio"
            )

    @torch.inference_mode()
    def _segment(self, query: Query) -> np.ndarray:
        self.check_shape(*query.images.shape[1:3])
        out = []
        for i in range(0, query.images.shape[0], self.max_batch):
            part = slice(i, i + self.max_batch)
            x = self._tensor(query.images[part]).permute(0, 3, 1, 2).float()
            p, lab, box = (
                None if a is None else self._tensor(a[part])
                for a in (query.points, query.labels, query.boxes)
            )
            out.append(self.model(x, p, lab, box).float().cpu().numpy())
        return np.concatenate(out, axis=0)

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(self.device)
