"""Segmentation metrics per image (Dice, IoU, HD95) and the smooth losses SPSA optimises."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage


def dice_per_image(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Dice of binary masks [B,H,W]; 1.0 when both are empty."""
    pred, target = pred.astype(bool), target.astype(bool)
    inter = (pred & target).sum((1, 2))
    total = pred.sum((1, 2)) + target.sum((1, 2))
    return np.where(total == 0, 1.0, 2 * inter / np.maximum(total, 1))


def iou_per_image(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    pred, target = pred.astype(bool), target.astype(bool)
    inter = (pred & target).sum((1, 2))
    union = (pred | target).sum((1, 2))
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def hd95(pred: np.ndarray, target: np.ndarray) -> float:
    """95th-percentile symmetric Hausdorff distance in pixels between two binary masks [H,W].

    0 when both are empty; the image diagonal when exactly one is (the customary worst case).
    """
    pred, target = pred.astype(bool), target.astype(bool)
    if not pred.any() and not target.any():
        return 0.0
    if not pred.any() or not target.any():
        return float(np.hypot(*pred.shape))
    sp, st = _surface(pred), _surface(target)
    d_to_t = ndimage.distance_transform_edt(~st)[sp]
    d_to_p = ndimage.distance_transform_edt(~sp)[st]
    return float(np.percentile(np.concatenate([d_to_t, d_to_p]), 95))


def hd95_per_image(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    return np.array([hd95(p, t) for p, t in zip(pred, target, strict=True)])


# Smooth per-image losses on FM logits (numpy: the black box returns arrays). SPSA needs a loss
# that moves with small prompt changes: never Dice of thresholded masks.


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * logits))  # overflow-free


def soft_dice_loss(logits: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """1 - (2 sum(y p) + 1) / (sum(y + p) + 1) per image, as BAPS uses it."""
    p, y = _sigmoid(logits.astype(np.float64)), masks.astype(np.float64)
    inter = (p * y).sum((-2, -1))
    return 1 - (2 * inter + 1) / (p.sum((-2, -1)) + y.sum((-2, -1)) + 1)


def bce_loss(logits: np.ndarray, masks: np.ndarray) -> np.ndarray:
    x, y = logits.astype(np.float64), masks.astype(np.float64)
    per_pixel = np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))
    return per_pixel.mean((-2, -1))


def focal_loss(
    logits: np.ndarray, masks: np.ndarray, gamma: float = 2.0, alpha: float = 0.25
) -> np.ndarray:
    x, y = logits.astype(np.float64), masks.astype(np.float64)
    p = _sigmoid(x)
    ce = np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))
    p_t = p * y + (1 - p) * (1 - y)
    a_t = alpha * y + (1 - alpha) * (1 - y)
    return (a_t * (1 - p_t) ** gamma * ce).mean((-2, -1))


LOSSES = {"dice": soft_dice_loss, "bce": bce_loss, "focal": focal_loss}


def soft_dice_loss_torch(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``soft_dice_loss`` for white-box training (the oracle), differentiable in ``logits``."""
    p, y = torch.sigmoid(logits), masks.float()
    inter = (p * y).sum((-2, -1))
    return 1 - (2 * inter + 1) / (p.sum((-2, -1)) + y.sum((-2, -1)) + 1)
