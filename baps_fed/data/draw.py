"""Vectorised drawing primitives shared by the synthetic image generators.

Everything takes an explicit ``np.random.Generator`` so every image is a pure function of its seed.
Images are float32 in [0, 1], shape [H, W, 3]; masks are bool [H, W].
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage


def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y), each [size, size]."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return xs + 0.5, ys + 0.5


def smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int = 1) -> np.ndarray:
    """Low-frequency noise in about [-1, 1], [H,W] or [H,W,C]: a coarse grid upsampled cubically."""
    coarse = rng.standard_normal((channels, cells + 3, cells + 3)).astype(np.float32)
    # Bicubic upsampling of the coarse grid, cropped so the edges are not special.
    big = int(round(size * (cells + 3) / cells))
    off = (big - size) // 2
    fine = np.stack(
        [
            np.asarray(Image.fromarray(c, mode="F").resize((big, big), Image.BICUBIC))
            for c in coarse
        ],
        axis=-1,
    )[off : off + size, off : off + size]
    fine = np.clip(fine / 1.5, -1.5, 1.5)
    return fine[..., 0] if channels == 1 else fine


def radial_blob(
    rng: np.random.Generator,
    size: int,
    centre: tuple[float, float],
    radius: float,
    aspect: float = 1.0,
    angle: float = 0.0,
    roughness: float = 0.2,
    harmonics: int = 5,
) -> tuple[np.ndarray, np.ndarray]:
    """An irregular closed shape r(theta) = radius (1 + sum_k a_k cos(k theta + phi_k)).

    Returns the mask and a signed "depth" map (>0 inside, about 1 at the centre), which the
    generators use for soft boundaries and shading.
    """
    xs, ys = grid(size)
    dx, dy = xs - centre[0], ys - centre[1]
    ca, sa = np.cos(angle), np.sin(angle)
    u = (dx * ca + dy * sa) / aspect
    v = -dx * sa + dy * ca
    rho = np.hypot(u, v)
    theta = np.arctan2(v, u)
    r = np.ones_like(theta)
    for k in range(2, harmonics + 2):
        r += roughness * rng.uniform(-1, 1) / k * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    boundary = radius * np.clip(r, 0.3, None)
    depth = 1.0 - rho / boundary
    return depth > 0, depth


def rotated_rect(
    size: int, centre: tuple[float, float], half: tuple[float, float], angle: float
) -> np.ndarray:
    xs, ys = grid(size)
    dx, dy = xs - centre[0], ys - centre[1]
    ca, sa = np.cos(angle), np.sin(angle)
    u = dx * ca + dy * sa
    v = -dx * sa + dy * ca
    return (np.abs(u) <= half[0]) & (np.abs(v) <= half[1])


def polygon(
    rng: np.random.Generator, size: int, centre: tuple[float, float], radius: float, vertices: int
) -> np.ndarray:
    """A random star-shaped polygon, rasterised by the even-odd rule on pixel centres."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, vertices))
    radii = radius * rng.uniform(0.5, 1.0, vertices)
    px = centre[0] + radii * np.cos(angles)
    py = centre[1] + radii * np.sin(angles)
    xs, ys = grid(size)
    inside = np.zeros((size, size), dtype=bool)
    j = vertices - 1
    for i in range(vertices):
        crosses = (py[i] > ys) != (py[j] > ys)
        x_int = (px[j] - px[i]) * (ys - py[i]) / (py[j] - py[i] + 1e-9) + px[i]
        inside ^= crosses & (xs < x_int)
        j = i
    return inside


def stripes(size: int, period: float, angle: float, phase: float) -> np.ndarray:
    """A sinusoidal grating in [0, 1]."""
    xs, ys = grid(size)
    t = xs * np.cos(angle) + ys * np.sin(angle)
    return 0.5 + 0.5 * np.sin(2 * np.pi * t / period + phase)


def curve_mask(
    rng: np.random.Generator,
    size: int,
    length: float,
    width: float,
    start: tuple[float, float] | None = None,
    bend: float = 0.3,
    angle: float | None = None,
) -> np.ndarray:
    """A thin curved stroke (hair, vessel, fold), as a bool mask."""
    steps = max(int(length), 2)
    x, y = start if start is not None else rng.uniform(0, size, 2)
    a = rng.uniform(0, 2 * np.pi) if angle is None else angle
    pts = np.empty((steps, 2), dtype=np.float32)
    for i in range(steps):
        pts[i] = (x, y)
        a += rng.normal(0, bend / np.sqrt(steps) * 3)
        x += np.cos(a)
        y += np.sin(a)
    canvas = np.zeros((size, size), dtype=bool)
    ij = np.round(pts).astype(int)
    ok = (ij[:, 0] >= 0) & (ij[:, 0] < size) & (ij[:, 1] >= 0) & (ij[:, 1] < size)
    canvas[ij[ok, 1], ij[ok, 0]] = True
    if width > 1.2:
        canvas = ndimage.binary_dilation(canvas, iterations=int(round(width / 2)))
    return canvas


def blend(image: np.ndarray, mask: np.ndarray | np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Alpha-blend a colour or a colour image into ``image`` with a (soft) mask in [0, 1]."""
    alpha = mask.astype(np.float32)[..., None]
    return image * (1 - alpha) + colour * alpha


def soften(mask: np.ndarray, sigma: float) -> np.ndarray:
    """A soft alpha in [0, 1] from a hard mask (a blurred edge)."""
    if sigma <= 0:
        return mask.astype(np.float32)
    return np.clip(ndimage.gaussian_filter(mask.astype(np.float32), sigma), 0, 1)


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return image
    return ndimage.gaussian_filter(image, (sigma, sigma, 0))


def to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
