"""Resizing a sample to SAM's square input: longest side to ``size``, zero-padded bottom/right."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from PIL import Image

from baps_fed.data.sample import Sample


def _resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest-neighbour, falling back to "any overlap" when that would erase a small object."""
    as_image = Image.fromarray(mask.astype(np.uint8) * 255)
    resized = np.asarray(as_image.resize((width, height), Image.Resampling.NEAREST)) > 0
    if mask.any() and not resized.any():
        resized = np.asarray(as_image.resize((width, height), Image.Resampling.BOX)) > 0
    return resized


def letterbox(sample: Sample, size: int) -> Sample:
    """The sample with its longest side resized to ``size``, zero-padded at bottom/right to
    ``size`` x ``size``, as SAM pads its input (so pixel coordinates keep their origin).

    Image: bilinear (Pillow); mask: nearest, except that an object nearest would erase keeps
    every pixel it overlaps, so the mask stays non-empty.
    """
    if size < 1:
        raise ValueError(f"letterbox size must be positive, got {size}")
    h, w = sample.mask.shape
    scale = size / max(h, w)
    nh, nw = max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale)))
    image = Image.fromarray(sample.image).resize((nw, nh), Image.Resampling.BILINEAR)
    out_image = np.zeros((size, size, 3), dtype=np.uint8)
    out_image[:nh, :nw] = np.asarray(image)
    out_mask = np.zeros((size, size), dtype=bool)
    out_mask[:nh, :nw] = _resize_mask(sample.mask, nw, nh)
    return replace(sample, image=out_image, mask=out_mask)  # name and manifest row kept
