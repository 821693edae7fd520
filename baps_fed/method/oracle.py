"""The white-box oracle: the same IP decoder trained by back-propagating through the FM.

Possible only because the embedded FM is ours. It is the ceiling any visual prompt of that
decoder can reach, and it separates "the prompt cannot help here" from "the zeroth-order
optimiser is too noisy" (reference/BAPS.md). Never part of a site's black-box training.
"""

from __future__ import annotations

import numpy as np
import torch

from baps_fed.data.prompts import POINT, PromptConfig
from baps_fed.data.sample import SegmentationDataset
from baps_fed.evaluation.metrics import soft_dice_loss_torch
from baps_fed.fm.sam_batched import BatchedSam
from baps_fed.method.box_refiner import SIDES, refine_boxes_torch
from baps_fed.method.ip_decoder import IPDecoder
from baps_fed.method.perturbations import SeedKey
from baps_fed.method.spsa_step import batch_rng, sample_batch
from baps_fed.method.visual_prompt import PIXEL_STD


def train_oracle(
    decoder: IPDecoder,
    model: BatchedSam,
    train: SegmentationDataset,
    steps: int = 300,
    batch_size: int = 8,
    lr: float = 0.02,
    seed: int = 0,
    prompt: PromptConfig = POINT,
) -> np.ndarray:
    """Adam on soft Dice through the FM; the prompted image is clipped but not rounded, and a
    box refiner's boxes (``adapt=box|both``) are not rounded either."""
    images = np.stack([s.image for s in train])
    masks = np.stack([s.mask for s in train])
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    std = torch.from_numpy(PIXEL_STD)[:, None, None]  # prompts are in SAM-normalised units
    theta = torch.tensor(decoder.get_theta(), requires_grad=True)
    opt = torch.optim.Adam([theta], lr=lr)
    key = SeedKey(seed, 0, 0)
    for step in range(steps):
        idx, prompts = sample_batch(masks, batch_size, batch_rng(key, step), prompt)
        inputs = decoder.encode(images[idx], prompts)
        visual = decoder.prompt_tensor(theta[None], inputs)[0]
        x = torch.from_numpy(images[idx]).permute(0, 3, 1, 2).float()
        x = (x + visual * std).clamp(0, 255)
        if prompts.points is not None:
            logits = model(x, torch.from_numpy(prompts.points), torch.ones(len(idx), 1))
        else:
            boxes = torch.from_numpy(prompts.boxes)
            if decoder.refines_boxes:
                coef = theta[decoder.n_visual :].view(1, SIDES, -1)
                hw = (x.shape[2], x.shape[3])
                feats = decoder.refiner_features(inputs)
                boxes = refine_boxes_torch(coef, feats, boxes, hw)[0].float()
            logits = model(x, boxes=boxes)
        loss = soft_dice_loss_torch(logits, torch.from_numpy(masks[idx])).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return theta.detach().numpy().astype(np.float32)
