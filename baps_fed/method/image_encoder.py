"""The IP decoder's frozen image encoder: small, shipped, trained by this project.

BAPS used a public CLIP ViT-B/32; it is NOT the FM's encoder, and neither is this one. The
default is a 4-stage CNN (128 px -> 64-d), pretrained as an autoencoder on the general-domain
corpus by ``simulations/pretrain_image_encoder.py`` (never on medical data, never with the FM's
weights). Its identity (name + SHA-256 of its weights) is stored in every decoder checkpoint.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from baps_fed.method.visual_prompt import PIXEL_MEAN, PIXEL_STD

WEIGHTS_FILE = "image_encoder.pt"
INPUT_SIZE = 128


class SmallImageEncoder(nn.Module):
    """uint8-range RGB [B,3,H,W] -> embedding [B, dim] (images resized to 128 px first)."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        chans = (3, 16, 32, 64, dim)
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GELU()]
        self.features = nn.Sequential(*layers)  # 128 -> 8 x 8 x dim
        self.dim = dim
        self.register_buffer("mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1))

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        if tuple(images.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(
                x, (INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True
            )
        return self.features((x - self.mean) / self.std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.feature_map(images).mean(dim=(2, 3))


def default_weights_path() -> Path:
    return Path(str(resources.files("baps_fed.method") / "weights" / WEIGHTS_FILE))


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_image_encoder(spec: str | Path | None = None) -> tuple[nn.Module, str]:
    """The frozen encoder a spec names, and its identity string (name + weights hash).

    small (or None)          the shipped encoder
    small:PATH (or a Path)   a small-encoder weights file (``pretrain_image_encoder.py``)
    clip:PATH                open_clip ViT-B-32 with local weights (``baps-fed[clip]``)
    clip:MODEL:PATH          another open_clip model, e.g. clip:ViT-B-16:/models/b16.bin
    """
    if isinstance(spec, Path):
        return _load_small(spec)
    kind, _, rest = (spec or "small").partition(":")
    if kind == "small":
        return _load_small(Path(rest) if rest else None)
    if kind == "clip":
        from baps_fed.method.clip_encoder import load_clip_encoder

        model, path = _clip_parts(rest)
        if not path:
            raise ValueError(f"image encoder {spec!r}: give the weights, clip:[MODEL:]PATH")
        return load_clip_encoder(Path(path), model), f"clip-{model}:{file_sha256(Path(path))[:16]}"
    raise ValueError(
        f"unknown image encoder {spec!r}: use small, small:PATH, clip:PATH or clip:MODEL:PATH"
    )


def with_weights(spec: str, path: Path) -> str:
    """The same kind of encoder as ``spec``, with its weights at ``path`` (a checkpoint moved to
    another machine keeps its model and finds the weights where the user says)."""
    kind, _, rest = spec.partition(":")
    if kind == "clip":
        return f"clip:{_clip_parts(rest)[0]}:{path}"
    return f"small:{path}"


def _clip_parts(rest: str) -> tuple[str, str]:
    """(model, weights path) of a clip spec's ``[MODEL:]PATH`` part."""
    from baps_fed.method.clip_encoder import DEFAULT_MODEL

    model, sep, path = rest.partition(":")
    return (model, path) if sep else (DEFAULT_MODEL, rest)


def _load_small(path: Path | None) -> tuple[SmallImageEncoder, str]:
    """The small encoder and its identity string ``small-cnn:<sha256 prefix>``."""
    path = Path(path) if path is not None else default_weights_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"image encoder weights not found at {path}; reinstall baps-fed or run "
            "`python simulations/pretrain_image_encoder.py`"
        )
    blob = torch.load(path, map_location="cpu", weights_only=True)
    enc = SmallImageEncoder(dim=int(blob["dim"]))
    enc.load_state_dict(blob["state_dict"])
    for p in enc.parameters():
        p.requires_grad_(False)
    return enc.eval(), f"small-cnn:{file_sha256(path)[:16]}"
