"""CLIP's image tower as the IP decoder's frozen image encoder (optional: ``baps-fed[clip]``).

BAPS used OpenAI's CLIP ViT-B/32. This loads an open_clip model's vision tower from a weights
file on local disk (e.g. the ``open_clip_pytorch_model.bin`` or ``.safetensors`` of a ViT-B-32
release); nothing is ever downloaded. Images arrive as the decoder gets them (uint8-range RGB,
[B, 3, H, W]) and are resized to the tower's input size and normalised with the model's own
mean and std. The identity (model name + SHA-256 of the weights file) goes into every decoder
checkpoint, like the shipped encoder's.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_MODEL = "ViT-B-32"


def _open_clip():
    try:
        import open_clip
    except ImportError as err:  # an optional extra: say how to get it
        raise ImportError(
            "the CLIP image encoder needs open_clip: pip install 'baps-fed[clip]' "
            '(or use the shipped encoder, image-encoder = "small")'
        ) from err
    return open_clip


class ClipImageEncoder(nn.Module):
    """uint8-range RGB [B,3,H,W] -> CLIP image embedding [B, dim] (frozen)."""

    def __init__(self, visual: nn.Module, image_size: int, mean, std) -> None:
        super().__init__()
        self.visual = visual
        self.image_size = image_size
        self.dim = int(visual.output_dim)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images / 255.0
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            size = (self.image_size, self.image_size)
            x = F.interpolate(x, size, mode="bicubic", align_corners=False, antialias=True)
        return self.visual((x - self.mean) / self.std)


def load_clip_encoder(path: Path, model_name: str = DEFAULT_MODEL) -> ClipImageEncoder:
    """The vision tower of open_clip's ``model_name`` with the weights at ``path``."""
    open_clip = _open_clip()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"CLIP weights not found at {path}: give a local open_clip checkpoint of "
            f'{model_name} (image-encoder = "clip:{model_name}:/path/to/weights"); '
            "nothing is downloaded"
        )
    if model_name not in open_clip.list_models():
        raise ValueError(
            f"open_clip has no model {model_name!r}; known ones include "
            f"{', '.join(m for m in open_clip.list_models() if m.startswith('ViT-B'))}"
        )
    try:
        model = open_clip.create_model(model_name, pretrained=str(path), device="cpu")
    except Exception as err:  # torch and open_clip raise several unrelated types for a bad file
        raise ValueError(f"{path}: not a {model_name} open_clip checkpoint ({err})") from err
    visual = model.visual.eval()
    for p in visual.parameters():
        p.requires_grad_(False)
    size = visual.image_size
    size = int(size[0] if isinstance(size, tuple | list) else size)
    cfg = getattr(visual, "preprocess_cfg", {}) or {}
    mean = cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)
    std = cfg.get("std", open_clip.OPENAI_DATASET_STD)
    return ClipImageEncoder(visual, size, mean, std).eval()
