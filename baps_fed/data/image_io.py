"""Decoding image and mask files with Pillow, so every dataset reader treats files the same way.

Images become RGB ``uint8 [H, W, 3]`` because the foundation model expects three channels;
masks become ``bool [H, W]`` by one documented rule, with a note whenever that rule had to repair
the file (so the repair can be reported rather than happen silently).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from baps_fed.data.sample import DatasetError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})

# What Pillow raises on missing, truncated or corrupt files (UnidentifiedImageError is an OSError).
_DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    zlib.error,
    Image.DecompressionBombError,
)


class ImageReadError(DatasetError):
    """A file Pillow cannot decode; the message names the file and says what to do."""


def is_image_file(path: Path) -> bool:
    """An image suffix (any case), and not a hidden file such as macOS's ``._name.jpg`` debris."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _decode(path: str | Path, to_array: Callable[[Image.Image], np.ndarray]) -> np.ndarray:
    """Open ``path`` and convert it inside the ``with`` so the file handle is always closed."""
    try:
        with Image.open(path) as im:
            im.load()
            return to_array(im)
    except _DECODE_ERRORS as err:
        raise ImageReadError(
            f"cannot read image file {path} ({err}); "
            "re-export the file (PNG, JPEG, BMP or TIFF) or remove it from the folder"
        ) from err


def _stretch_to_uint8(values: np.ndarray) -> np.ndarray:
    """High-bit-depth or float grey levels -> 0..255, rounded to the nearest level.

    Float images within 0..1 (the usual float convention) are scaled by 255. Other values already
    within 0..255 are kept; otherwise the image's own [min, max] is stretched linearly, because
    16-bit medical exports often use only 10-12 bits and dividing by 65535 would leave them
    almost black.
    """
    v = values.astype(np.float64)
    if v.size == 0:
        return np.zeros(v.shape, dtype=np.uint8)
    finite = np.isfinite(v)
    if not finite.all():  # NaN/Inf pixels (float TIFFs) count as black, not as the range
        v = np.where(finite, v, 0.0)
    lo, hi = float(v.min()), float(v.max())
    if values.dtype.kind == "f" and lo >= 0 and hi <= 1:
        return np.round(v * 255.0).astype(np.uint8)
    if lo >= 0 and hi <= 255:
        return np.round(v).astype(np.uint8)
    if hi == lo:
        return np.zeros(v.shape, dtype=np.uint8)
    return np.round((v - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _image_to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode.startswith("I") or im.mode == "F":
        grey = _stretch_to_uint8(np.asarray(im))
        return np.repeat(grey[..., None], 3, axis=2)
    return np.array(im.convert("RGB"))


def read_image(path: str | Path) -> np.ndarray:
    """An image file as RGB ``uint8 [H, W, 3]``.

    - Grayscale (``L``, ``1``), palette (``P``) and CMYK/YCbCr images are converted to RGB.
    - 16/32-bit and float grayscale (``I;16``, ``I``, ``F``) is brought to 0..255 (float images
      within 0..1 are scaled by 255; other values already within 0..255 are kept; else the
      image's min..max is stretched), rounded to the nearest level, and repeated x3.
    - Alpha (``RGBA``, ``LA``, ``PA``) is dropped, not composited: the colour under a transparent
      pixel is kept.
    - Multi-frame files (TIFF stacks) give their first frame. EXIF orientation is ignored, so the
      pixels stay aligned with masks, which carry no EXIF.

    These conversions are not reported as problems: they lose nothing the model uses.
    Raises ``ImageReadError`` (naming the file) when it cannot be decoded.
    """
    return _decode(path, _image_to_rgb)


def _mask_to_grey(im: Image.Image) -> np.ndarray:
    if im.mode == "1":
        return np.array(im, dtype=np.uint8) * 255
    if im.mode in ("L", "F") or im.mode.startswith("I"):
        return np.array(im)
    if im.mode in ("LA", "La"):
        return np.array(im.getchannel("L"))
    return np.array(im.convert("L"))  # RGB(A), P, CMYK...: ITU-R 601 luminance, alpha dropped


def read_mask_values(path: str | Path) -> np.ndarray:
    """A mask file's grey levels as a 2-D array, before any binarisation.

    Multi-channel masks are reduced to their luminance (alpha dropped); palette masks to the
    luminance of their colours; 16-bit and float masks keep their values. Readers with their own
    label encoding (REFUGE: 0 cup, 128 rim, 255 background) start from this.
    """
    return _decode(path, _mask_to_grey)


def distinct_values(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values; a histogram for 8-bit masks, much faster than sorting pixels."""
    if values.dtype == np.uint8:
        return np.flatnonzero(np.bincount(values.ravel(), minlength=256)).astype(np.uint8)
    return np.unique(values)


def half_level(values: np.ndarray) -> float:
    """Half of the largest value the mask's range can hold: 128 for 8-bit, 32768 for 16-bit.

    The range is the smallest of 8/16/32 bits that holds the mask's maximum (so a 16-bit file
    holding 0..255 counts as 8-bit), or 0..1 for float masks with values up to 1.
    """
    top = float(values.max()) if values.size else 0.0
    if values.dtype.kind == "f" and top <= 1.0:
        return 0.5
    for bits in (8, 16, 32):
        if top < 2**bits:
            return float(2 ** (bits - 1))
    return float(2**63)


def binarize_mask(values: np.ndarray) -> tuple[np.ndarray, str | None]:
    """Grey levels -> boolean mask, plus a note when the mask had to be repaired.

    - Values {0} or {0, k} (one k > 0), or a single constant: foreground = nonzero; no note.
      This accepts 0/1, 0/255 and 0/label masks alike.
    - Anything else (more levels, e.g. JPEG artefacts as in Kvasir-SEG's .jpg masks, or two
      levels neither of which is 0): foreground = value >= half the range (128 for 8-bit, see
      ``half_level``), with the note ``"non-binary mask (...); thresholded at 128"``.

    Notes have the form ``"<what was wrong>; <what was done>"``.
    """
    levels = distinct_values(values)
    if levels.size <= 1 or (levels.size == 2 and levels[0] == 0):
        return values != 0, None
    level = half_level(values)
    shown = ", ".join(f"{v:g}" for v in levels[:4]) + (", ..." if levels.size > 4 else "")
    note = (
        f"non-binary mask ({levels.size} distinct values: {shown}; e.g. JPEG artefacts); "
        f"thresholded at {level:g}"
    )
    return values >= level, note


def read_mask(path: str | Path) -> tuple[np.ndarray, str | None]:
    """A mask file as ``bool [H, W]`` and an optional repair note.

    Rules (see ``read_mask_values`` and ``binarize_mask``): multi-channel masks are reduced to
    their luminance; {0} or {0, k} -> foreground = nonzero, no note; more than two distinct values
    -> foreground = value >= 128 (half the 8-bit range; 32768 for 16-bit), with a note
    ``"non-binary mask (...); thresholded at 128"``.
    Raises ``ImageReadError`` (naming the file) when it cannot be decoded.
    """
    return binarize_mask(read_mask_values(path))
