"""A plain, one-image implementation of MedSAM's authors' inference steps (bowang-lab/MedSAM,
``MedSAM_Inference.py``), with their library (skimage) and any segment-anything ``Sam``: the
reference ``medsam:PATH`` must match. ``S`` is the model's input size (1024 for MedSAM)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from skimage import transform


def authors_medsam_mask(sam: torch.nn.Module, image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """uint8 image [H,W,3] and pixel box (x0, y0, x1, y1) -> uint8 mask [H,W]."""
    size = sam.image_encoder.img_size
    h, w = image.shape[:2]
    img = transform.resize(
        image, (size, size), order=3, preserve_range=True, anti_aliasing=True
    ).astype(np.uint8)
    img = (img - img.min()) / np.clip(img.max() - img.min(), a_min=1e-8, a_max=None)
    x = torch.tensor(img).float().permute(2, 0, 1).unsqueeze(0)
    box_s = box[None] / np.array([w, h, w, h]) * size
    with torch.no_grad():
        embedding = sam.image_encoder(x)
        box_torch = torch.as_tensor(box_s, dtype=torch.float)[:, None, :]
        sparse, dense = sam.prompt_encoder(points=None, boxes=box_torch, masks=None)
        low_res, _ = sam.mask_decoder(
            image_embeddings=embedding,
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        p = F.interpolate(torch.sigmoid(low_res), (h, w), mode="bilinear", align_corners=False)
    return (p.squeeze().numpy() > 0.5).astype(np.uint8)
