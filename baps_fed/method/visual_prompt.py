"""How a visual prompt meets the FM: added in SAM-normalised space, then back to uint8.

The FM receives what an API would: uint8 pixels. A prompt that moves a pixel by less than half a
grey level vanishes in the cast, so perturbation scales are chosen in grey levels
(``grey_levels``, ``train.calibrate_c``) and checked to survive quantisation
(tests/test_train_step.py, tests/test_decoder.py).
"""

from __future__ import annotations

import numpy as np

# SAM's normalisation (segment_anything.modeling.Sam pixel_mean / pixel_std), RGB order.
PIXEL_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)


def apply_prompt(images: np.ndarray, prompts: np.ndarray) -> np.ndarray:
    """uint8 images [B,H,W,3] + prompts [B,3,H,W] in normalised units -> uint8 [B,H,W,3].

    (x - mean)/std + p, de-normalised, is x + p * std: clipped to [0, 255] and rounded to the
    nearest grey level (the published code truncated; rounding is unbiased).
    """
    shift = np.transpose(prompts, (0, 2, 3, 1)) * PIXEL_STD
    out = images.astype(np.float32) + shift
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def grey_levels(normalised: float) -> float:
    """How many grey levels a prompt change of ``normalised`` units moves a pixel (mean channel)."""
    return float(normalised * PIXEL_STD.mean())
