"""The general-domain corpus the embedded FM is pretrained on: SAM's world in miniature.

Scenes of everyday-looking objects (ellipses, boxes, polygons, irregular blobs) with varied
colours and textures, on textured backgrounds with clutter, where objects occlude each other.
Each scene comes with a label map of the *visible* part of every object, so a point prompt on an
object asks for exactly what can be seen of it. Boundaries are mostly crisp and objects mostly
differ in colour from what surrounds them: that is what the medical-like modalities then break.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from baps_fed.data import draw
from baps_fed.data.sample import Sample, SegmentationDataset


@dataclass(frozen=True)
class GeneralScene:
    image: np.ndarray  # uint8 [H, W, 3]
    labels: np.ndarray  # int16 [H, W]: 0 background, k = visible part of object k
    num_objects: int


def _texture(rng: np.random.Generator, size: int, base: np.ndarray) -> np.ndarray:
    """A colour field around ``base``: flat, gradient, noise, stripes or two-tone."""
    kind = rng.choice(
        ["flat", "gradient", "noise", "stripes", "twotone"], p=[0.3, 0.2, 0.25, 0.15, 0.1]
    )
    img = np.broadcast_to(base, (size, size, 3)).astype(np.float32).copy()
    if kind == "gradient":
        xs, ys = draw.grid(size)
        a = rng.uniform(0, 2 * np.pi)
        t = ((xs * np.cos(a) + ys * np.sin(a)) / size - 0.5)[..., None]
        img += t * rng.uniform(0.1, 0.4) * rng.choice([-1, 1], size=3)
    elif kind == "noise":
        img += draw.smooth_noise(rng, size, int(rng.integers(3, 16)), 3) * rng.uniform(0.03, 0.12)
    elif kind == "stripes":
        g = draw.stripes(size, rng.uniform(4, 20), rng.uniform(0, np.pi), rng.uniform(0, 6.3))
        img += (g[..., None] - 0.5) * rng.uniform(0.1, 0.3) * rng.choice([-1, 1], size=3)
    elif kind == "twotone":
        other = rng.uniform(0, 1, 3)
        m = draw.smooth_noise(rng, size, int(rng.integers(2, 6)))[..., None] > 0
        img = np.where(m, img, other * 0.5 + img * 0.5)
    return img


def _object_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    scale = size * rng.choice(
        [rng.uniform(0.06, 0.14), rng.uniform(0.12, 0.3), rng.uniform(0.25, 0.45)],
        p=[0.3, 0.5, 0.2],
    )
    centre = tuple(rng.uniform(0.1 * size, 0.9 * size, 2))
    kind = rng.choice(["ellipse", "rect", "polygon", "blob"])
    if kind == "ellipse":
        mask, _ = draw.radial_blob(
            rng, size, centre, scale, rng.uniform(0.4, 2.2), rng.uniform(0, np.pi), roughness=0.0
        )
    elif kind == "rect":
        half = (scale * rng.uniform(0.4, 1.2), scale * rng.uniform(0.4, 1.2))
        mask = draw.rotated_rect(size, centre, half, rng.uniform(0, np.pi))
    elif kind == "polygon":
        mask = draw.polygon(rng, size, centre, scale * 1.2, int(rng.integers(3, 9)))
    else:
        mask, _ = draw.radial_blob(
            rng,
            size,
            centre,
            scale,
            rng.uniform(0.5, 1.8),
            rng.uniform(0, np.pi),
            roughness=rng.uniform(0.3, 1.2),
        )
    return mask


def make_general_scene(
    seed: int, size: int = 128, max_objects: int = 6, min_visible: int = 24
) -> GeneralScene:
    """One scene, a pure function of ``seed``."""
    rng = np.random.default_rng(seed)
    image = _texture(rng, size, rng.uniform(0.05, 0.95, 3))
    # Background clutter: thin strokes and specks that are not objects.
    for _ in range(int(rng.integers(0, 6))):
        stroke = draw.curve_mask(rng, size, rng.uniform(10, 60), rng.uniform(1, 2.5))
        image = draw.blend(image, stroke * rng.uniform(0.3, 0.9), rng.uniform(0, 1, 3))
    labels = np.zeros((size, size), dtype=np.int16)
    n = 0
    for _ in range(int(rng.integers(1, max_objects + 1))):
        mask = _object_mask(rng, size)
        if mask.sum() < min_visible:
            continue
        colour = rng.uniform(0, 1, 3)
        # Keep objects distinguishable from what they cover (mostly: a few are camouflaged).
        under = image[mask].mean(0)
        if np.abs(colour - under).sum() < 0.35 and rng.random() < 0.8:
            colour = np.clip(1.0 - under + rng.normal(0, 0.1, 3), 0, 1)
        fill = _texture(rng, size, colour)
        shade = rng.uniform(0, 0.25)
        if shade > 0.05:  # a soft highlight, so objects are not perfectly flat
            _, depth = draw.radial_blob(
                rng,
                size,
                tuple(np.argwhere(mask).mean(0)[::-1]),
                np.sqrt(mask.sum()),
                roughness=0.0,
            )
            fill = fill + shade * np.clip(depth, 0, 1)[..., None] - shade / 2
        image = draw.blend(image, draw.soften(mask, rng.uniform(0, 0.8)), fill)
        n += 1
        labels[mask] = n
    # Objects hidden under later ones may have vanished: renumber the visible ones.
    ids = [k for k in range(1, n + 1) if (labels == k).sum() >= min_visible]
    remap = np.zeros(n + 1, dtype=np.int16)
    remap[ids] = np.arange(1, len(ids) + 1)
    labels = remap[labels]
    image = draw.blur(image, rng.uniform(0, 0.7))
    image = image + rng.normal(0, rng.uniform(0, 0.03), image.shape).astype(np.float32)
    return GeneralScene(draw.to_uint8(image), labels, len(ids))


def general_dataset(n: int, seed0: int, size: int = 128) -> SegmentationDataset:
    """Held-out scenes of the FM's own domain, one object per scene picked by the scene's seed."""
    samples = []
    for seed in range(seed0, seed0 + n):
        scene = make_general_scene(seed, size)
        if scene.num_objects == 0:
            continue
        k = np.random.default_rng([seed, 1]).integers(1, scene.num_objects + 1)
        samples.append(Sample(scene.image, scene.labels == k, f"general-{seed}"))
    return SegmentationDataset("general", samples)
