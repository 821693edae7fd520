"""Small real data folders for the manifest, subset and grouped-split tests: generic layout
(images/ + masks/) with a manifest.csv."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_pair(root: Path, name: str, size: int = 8) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    image = np.full((size, size, 3), 100, np.uint8)
    mask = np.zeros((size, size), np.uint8)
    mask[2:5, 2:5] = 255
    Image.fromarray(image).save(root / "images" / f"{name}.png")
    Image.fromarray(mask).save(root / "masks" / f"{name}.png")


def write_manifest(root: Path, text: str) -> Path:
    path = root / "manifest.csv"
    path.write_text(text)
    return path


def write_site(root: Path, sequences: int = 6, frames: int = 3) -> Path:
    """``sequences`` x ``frames`` image/mask pairs, named f"s{seq}_f{frame}", with a manifest
    giving each its sequence (1..) and quality ("poor" for even sequences)."""
    rows = ["name,frame,sequence,quality"]
    for seq in range(1, sequences + 1):
        for frame in range(frames):
            name = f"s{seq}_f{frame}"
            write_pair(root, name)
            rows.append(f"{name},{frame},{seq},{'poor' if seq % 2 == 0 else 'good'}")
    write_manifest(root, "\n".join(rows) + "\n")
    return root
