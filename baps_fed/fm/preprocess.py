"""How each FM family turns uint8 images into encoder input, and logits back into masks.

- ``sam``: segment-anything's ``ResizeLongestSide`` + pixel mean/std + zero pad at the bottom/
  right; logits upsampled to the encoder size, cropped, resized to the image.
- ``medsam`` (bowang-lab/MedSAM ``MedSAM_Inference.py``): the image is stretched to S x S
  (aspect not kept) by skimage's ``resize(order=3, preserve_range=True, anti_aliasing=True)``:
  a Gaussian blur when shrinking, then a cubic spline; clipped to the image's own range, cast to
  uint8 by truncation, then min-max normalised to [0, 1] over the whole image; no mean/std.
  Boxes scale by (S/W, S/H), not rounded. The low-res logits go through a sigmoid and the
  probabilities are resized to H x W (bilinear); mask = p > 0.5.
- ``litemedsam`` (bowang-lab/MedSAM, branch LiteMedSAM, ``CVPR24_LiteMedSAM_infer.py``): the
  longest side is resized to S = 256 with OpenCV's ``INTER_AREA`` (aspect kept, uint8 result),
  min-max normalised to [0, 1], zero-padded at the bottom/right; boxes are scaled by S / max(H, W)
  and truncated to integers. The 256 x 256 logits are cropped to the resized size and resized to
  H x W (bilinear).

Every step is differentiable (the white-box oracle and the embedded FM's pretraining go through
it): the uint8 casts are straight-through roundings, the area resize is a pair of matrices.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

Preprocess = Literal["sam", "medsam", "litemedsam"]
PREPROCESSES: tuple[str, ...] = ("sam", "medsam", "litemedsam")


def longest_side_shape(h: int, w: int, size: int) -> tuple[int, int]:
    """Longest side to ``size``, aspect kept, rounded as segment-anything and the authors do."""
    scale = size / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def _straight_through(x: torch.Tensor, rounded: torch.Tensor) -> torch.Tensor:
    """The value of ``rounded`` with the gradient of ``x`` (a uint8 cast that lets SPSA's
    white-box counterpart see through it)."""
    return x + (rounded - x).detach()


def as_uint8(x: torch.Tensor, mode: Literal["round", "trunc"]) -> torch.Tensor:
    """Values a uint8 cast would give: OpenCV rounds halves up, numpy's astype truncates."""
    clamped = x.clamp(0, 255)
    rounded = (clamped + 0.5).floor() if mode == "round" else clamped.floor()
    return _straight_through(clamped, rounded)


def minmax(x: torch.Tensor) -> torch.Tensor:
    """Per image [B,C,H,W], over all its channels and pixels, to [0, 1] (the authors' clip)."""
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-8)


def area_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """[n_out, n_in] weights of OpenCV's INTER_AREA along one axis.

    Shrinking: each output pixel averages the input pixels it covers, by covered fraction.
    Enlarging: OpenCV's area mode is a bilinear blend confined to the one input pixel border
    a sample falls across (imgproc/src/resize.cpp, the INTER_AREA branch of the linear tables).
    """
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    scale = n_in / n_out
    if scale >= 1:
        for j in range(n_out):
            start, end = j * scale, (j + 1) * scale
            for i in range(math.floor(start), min(math.ceil(end), n_in)):
                m[j, i] = (min(end, i + 1) - max(start, i)) / scale
        return m.float()
    inv = n_out / n_in
    for j in range(n_out):
        s = math.floor(j * scale)
        f = (j + 1) - (s + 1) * inv
        f = 0.0 if f <= 0 else f - math.floor(f)
        a, b = min(max(s, 0), n_in - 1), min(max(s + 1, 0), n_in - 1)
        m[j, a] += 1 - f
        m[j, b] += f
    return m.float()


def resize_area(x: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """[B,C,H,W] -> [B,C,h,w] as ``cv2.resize(..., interpolation=cv2.INTER_AREA)``."""
    h, w = x.shape[-2:]
    rows = area_matrix(h, out_hw[0]).to(x)
    cols = area_matrix(w, out_hw[1]).to(x)
    return rows @ x @ cols.T


@functools.lru_cache(maxsize=8)
def spline_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """[n_out, n_in] weights of skimage's ``resize(order=3, anti_aliasing=True)`` along one axis.

    skimage blurs with sigma = (n_in / n_out - 1) / 2 when shrinking, then calls
    ``ndimage.zoom(order=3, mode="mirror", grid_mode=True)``; both are linear and separable, so
    running them on the identity gives the axis's matrix (exact up to float rounding).
    """
    x = np.eye(n_in)
    if n_in > n_out:
        x = ndimage.gaussian_filter1d(x, (n_in / n_out - 1) / 2, axis=0, mode="mirror")
    m = ndimage.zoom(x, (n_out / n_in, 1), order=3, mode="mirror", grid_mode=True)
    return torch.from_numpy(m).float()


def resize_spline(x: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """[B,C,H,W] -> [B,C,h,w] as ``skimage.transform.resize(order=3, preserve_range=True,
    anti_aliasing=True)``, including its clip to each image's own value range."""
    h, w = x.shape[-2:]
    out = spline_matrix(h, out_hw[0]).to(x) @ x @ spline_matrix(w, out_hw[1]).to(x).T
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return torch.maximum(torch.minimum(out, hi), lo)


def prepare(
    images: torch.Tensor,
    preprocess: str,
    size: int,
    pixel_mean: torch.Tensor,
    pixel_std: torch.Tensor,
) -> torch.Tensor:
    """float images [B,3,H,W] in 0..255 -> encoder input [B,3,size,size]."""
    h, w = images.shape[-2:]
    if preprocess == "medsam":
        x = resize_spline(images, (size, size)) if (h, w) != (size, size) else images
        return minmax(as_uint8(x, "trunc"))
    rh, rw = longest_side_shape(h, w, size)
    if preprocess == "litemedsam":
        x = resize_area(images, (rh, rw)) if (rh, rw) != (h, w) else images
        x = minmax(as_uint8(x, "round"))
    elif preprocess == "sam":
        x = images
        if (rh, rw) != (h, w):
            x = F.interpolate(x, (rh, rw), mode="bilinear", align_corners=False, antialias=True)
        x = (x - pixel_mean) / pixel_std
    else:
        raise ValueError(f"unknown preprocessing {preprocess!r}; use one of {PREPROCESSES}")
    return F.pad(x, (0, size - rw, 0, size - rh))


def resized_shape(h: int, w: int, preprocess: str, size: int) -> tuple[int, int]:
    """The image's size inside the encoder's input (MedSAM stretches; the others keep aspect)."""
    return (size, size) if preprocess == "medsam" else longest_side_shape(h, w, size)


def scale_boxes(
    boxes: torch.Tensor, input_hw: tuple[int, int], preprocess: str, size: int
) -> torch.Tensor:
    """Pixel boxes [B,4] at the input resolution -> the encoder frame."""
    h, w = input_hw
    if preprocess == "litemedsam":  # resize_box_to_256: int(box * 256 / max(H, W))
        scaled = boxes * (size / max(h, w))  # straight-through: the oracle moves boxes too
        return _straight_through(scaled, torch.floor(scaled))
    rh, rw = resized_shape(h, w, preprocess, size)
    return boxes * boxes.new_tensor([rw / w, rh / h, rw / w, rh / h])


def postprocess(
    low_res: torch.Tensor, input_hw: tuple[int, int], preprocess: str, size: int
) -> torch.Tensor:
    """Low-res logits [B,h4,w4] -> logits at the input size [B,H,W]."""
    if preprocess == "medsam":  # the authors resize probabilities, not logits
        p = F.interpolate(torch.sigmoid(low_res[:, None]), input_hw, mode="bilinear")
        return torch.logit(p[:, 0], eps=1e-6)
    rh, rw = resized_shape(*input_hw, preprocess, size)
    x = low_res[:, None]
    if x.shape[-1] != size:
        x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False)
    x = F.interpolate(x[..., :rh, :rw], input_hw, mode="bilinear", align_corners=False)
    return x[:, 0]
