"""Evaluate an FM (optionally behind a visual prompt) on a dataset: per-image Dice, IoU, HD95.

Prompts (a point or a box) are seeded per sample name, so the same image gets the same prompt in
every run and in every method compared (the published code drew them unseeded).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from baps_fed.data.prompts import POINT, PromptConfig, Prompts, seeded_prompt
from baps_fed.data.sample import Sample, SegmentationDataset
from baps_fed.evaluation.metrics import dice_per_image, hd95_per_image, iou_per_image
from baps_fed.fm.contract import BlackboxFM
from baps_fed.fm.errors import QueryBudgetExceeded

# (images uint8 [B,H,W,3], their prompts) -> (prompted images, the prompts the FM receives)
PromptFn = Callable[[np.ndarray, Prompts], tuple[np.ndarray, Prompts]]


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


def sample_prompts(samples: list[Sample], seed: int, cfg: PromptConfig) -> Prompts:
    """The evaluation prompts of these samples: functions of (seed, sample name) only."""
    return Prompts.stack([seeded_prompt(s.mask, s.name, seed, cfg) for s in samples], cfg.kind)


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
    prompt_seed: int = 0,
    prompting: PromptConfig = POINT,
    batch_size: int = 32,
    prompt: PromptFn | None = None,
    keep_partial: bool = False,
) -> Scores:
    """One prompt per image (``prompting``: a point or a box); Dice after thresholding the
    FM's logits at 0 (p = 0.5), behind the visual prompt ``prompt`` when one is given. With
    ``keep_partial`` a spent query budget ends it with the images scored so far."""
    names, dice, iou, hd, stopped = [], [], [], [], ""
    for chunk in _same_shape_chunks(list(dataset), batch_size):
        images = np.stack([s.image for s in chunk])
        masks = np.stack([s.mask for s in chunk])
        prompts = sample_prompts(chunk, prompt_seed, prompting)
        if prompt is not None:
            images, prompts = prompt(images, prompts)
        try:
            pred = fm.segment(images, **prompts.query()) > 0
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
