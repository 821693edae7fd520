"""Evaluate an FM (optionally behind a visual prompt) on a dataset: per-image Dice, IoU, HD95.

Points are seeded per sample name, so the same image gets the same prompt in every run and in
every method compared (the published code drew them unseeded).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from baps_fed.data.points import PointMode, sample_point
from baps_fed.data.sample import Sample, SegmentationDataset
from baps_fed.evaluation.metrics import dice_per_image, hd95_per_image, iou_per_image
from baps_fed.fm.contract import BlackboxFM
from baps_fed.fm.errors import QueryBudgetExceeded

# (images uint8 [B,H,W,3], points [B,1,2]) -> prompted images uint8 [B,H,W,3]
PromptFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Scores:
    names: list[str]
    dice: np.ndarray
    iou: np.ndarray
    hd95: np.ndarray
    stopped: str = ""  # why the evaluation ended before the last image ("": it did not)

    def summary(self) -> dict[str, float]:
        if not self.names:
            nan = float("nan")
            return {"n": 0, "dice": nan, "dice_std": nan, "iou": nan, "hd95": nan}
        return {
            "n": len(self.names),
            "dice": float(self.dice.mean()),
            "dice_std": float(self.dice.std()),
            "iou": float(self.iou.mean()),
            "hd95": float(self.hd95.mean()),
        }


def prompt_point(sample: Sample, seed: int, mode: PointMode = "uniform") -> np.ndarray:
    """The evaluation point of one sample: a function of (seed, sample name) only."""
    rng = np.random.default_rng([seed, zlib.crc32(sample.name.encode())])
    return sample_point(sample.mask, rng, mode)


def _same_shape_chunks(samples: list[Sample], batch_size: int):
    chunk: list[Sample] = []
    for s in samples:
        if chunk and (len(chunk) == batch_size or s.image.shape != chunk[0].image.shape):
            yield chunk
            chunk = []
        chunk.append(s)
    if chunk:
        yield chunk


def evaluate_fm(
    fm: BlackboxFM,
    dataset: SegmentationDataset,
    point_seed: int = 0,
    point_mode: PointMode = "uniform",
    batch_size: int = 32,
    prompt: PromptFn | None = None,
    keep_partial: bool = False,
) -> Scores:
    """One positive point per image; Dice after thresholding the FM's logits at 0 (p = 0.5).
    With ``keep_partial`` a spent query budget ends it with the images scored so far."""
    names, dice, iou, hd, stopped = [], [], [], [], ""
    for chunk in _same_shape_chunks(list(dataset), batch_size):
        images = np.stack([s.image for s in chunk])
        masks = np.stack([s.mask for s in chunk])
        points = np.stack([prompt_point(s, point_seed, point_mode) for s in chunk])[:, None]
        if prompt is not None:
            images = prompt(images, points)
        try:
            pred = fm.segment(images, points) > 0
        except QueryBudgetExceeded as err:
            if not keep_partial:
                raise
            stopped = str(err)
            break
        names += [s.name for s in chunk]
        dice.append(dice_per_image(pred, masks))
        iou.append(iou_per_image(pred, masks))
        hd.append(hd95_per_image(pred, masks))
    if not names:
        return Scores([], np.zeros(0), np.zeros(0), np.zeros(0), stopped)
    return Scores(names, np.concatenate(dice), np.concatenate(iou), np.concatenate(hd), stopped)
