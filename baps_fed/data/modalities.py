"""Synthetic medical-like modalities: where a general-domain FM fails the way SAM does.

Each modality is a generator of (image, mask) pairs, deterministic by seed, with a per-"scanner"
profile (white balance, gamma, noise, blur, vignetting) so two sites of one modality still
differ. The failure modes are the ones SAM shows on medical images, built in on purpose:
- weak, low-contrast boundaries (polyps the colour of the mucosa, hypoechoic lesions in speckle);
- clutter and highlights that pull the mask (hairs, specular spots, vessels, acoustic shadows);
- objects larger than the point suggests (a dark core inside a lesion, the bright cup inside the
  optic disc: a point there makes a general FM segment only the inner part).
Objects stay visible to a careful eye (and to an input-conditioned prompt): the cue is there but
faint, as in the real modalities.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from baps_fed.data import draw
from baps_fed.data.sample import Sample, SegmentationDataset

MODALITIES = ("dermoscopy", "colonoscopy", "fundus", "ultrasound")


@dataclass(frozen=True)
class Scanner:
    """Acquisition differences between sites of one modality."""

    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    gamma: float = 1.0
    offset: float = 0.0
    noise: float = 0.01
    blur: float = 0.0
    vignette: float = 0.0

    @classmethod
    def from_id(cls, modality: str, scanner: int) -> Scanner:
        """Scanner 0 is the reference device; others are drawn deterministically from the id."""
        if scanner == 0:
            return cls()
        rng = np.random.default_rng([MODALITIES.index(modality), scanner, 7919])
        return cls(
            gain=tuple(float(g) for g in rng.uniform(0.85, 1.15, 3)),
            gamma=float(rng.uniform(0.8, 1.25)),
            offset=float(rng.uniform(-0.05, 0.05)),
            noise=float(rng.uniform(0.005, 0.03)),
            blur=float(rng.uniform(0.0, 0.8)),
            vignette=float(rng.uniform(0.0, 0.3)),
        )

    def apply(self, image: np.ndarray, rng: np.random.Generator, grey: bool = False) -> np.ndarray:
        size = image.shape[0]
        x = draw.blur(image, self.blur)
        if self.vignette > 0:
            xs, ys = draw.grid(size)
            r = np.hypot(xs - size / 2, ys - size / 2) / (size / 2)
            x = x * (1 - self.vignette * np.clip(r - 0.5, 0, None) ** 2)[..., None]
        gain = np.full(3, np.mean(self.gain)) if grey else np.asarray(self.gain)
        x = np.clip(x * gain + self.offset, 0, 1) ** self.gamma
        n = rng.normal(0, self.noise, x.shape[:2] + ((1,) if grey else (3,)))
        return x + n


def _vignette(size: int, strength: float, radius: float = 0.75) -> np.ndarray:
    xs, ys = draw.grid(size)
    r = np.hypot(xs - size / 2, ys - size / 2) / (size / 2)
    return np.clip(1 - strength * np.clip(r - radius, 0, None) / (1.45 - radius), 0, 1)[..., None]


def _centre(rng: np.random.Generator, size: int, margin: float) -> tuple[float, float]:
    return tuple(rng.uniform(margin * size, (1 - margin) * size, 2))


def dermoscopy(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A pigmented lesion on skin: soft borders, a dark core, hairs, bubbles and a scope ring."""
    skin = np.array([0.86, 0.66, 0.56]) + rng.normal(0, 0.04, 3)
    img = skin + draw.smooth_noise(rng, size, 6, 3) * 0.03
    radius = size * rng.uniform(0.18, 0.32)
    mask, depth = draw.radial_blob(
        rng,
        size,
        _centre(rng, size, 0.3),
        radius,
        rng.uniform(0.7, 1.4),
        rng.uniform(0, np.pi),
        roughness=0.8,
    )
    # Low contrast at the rim: the lesion colour fades in over a wide band.
    lesion = skin * rng.uniform(0.5, 0.7) + draw.smooth_noise(rng, size, 8, 3) * 0.04
    alpha = np.clip(depth / rng.uniform(0.25, 0.6), 0, 1) * rng.uniform(0.65, 0.95)
    img = draw.blend(img, alpha, lesion)
    # A much darker, crisp core: a general FM stops at its edge.
    core, _ = draw.radial_blob(
        rng,
        size,
        tuple(np.argwhere(mask).mean(0)[::-1] + rng.normal(0, radius * 0.15, 2)),
        radius * rng.uniform(0.35, 0.6),
        roughness=0.6,
    )
    img = draw.blend(img, core & mask, np.array([0.28, 0.16, 0.12]) + rng.normal(0, 0.03, 3))
    for _ in range(int(rng.integers(2, 9))):  # hairs cross lesion and skin alike
        hair = draw.curve_mask(rng, size, rng.uniform(40, 140), rng.uniform(1, 2), bend=0.6)
        img = draw.blend(img, hair * 0.85, np.array([0.12, 0.08, 0.06]))
    for _ in range(int(rng.integers(0, 4))):  # gel bubbles: bright rings with a highlight
        bub, d = draw.radial_blob(
            rng, size, _centre(rng, size, 0.1), size * rng.uniform(0.03, 0.08), roughness=0.0
        )
        img = draw.blend(img, bub * (1 - np.clip(d * 3, 0, 1)) * 0.7, np.ones(3))
    img = img * _vignette(size, rng.uniform(0.6, 1.0), radius=0.85)
    return img, mask


def colonoscopy(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A polyp on mucosa: same colour as its surroundings, seen by shading; specular glare."""
    mucosa = np.array([0.78, 0.42, 0.36]) + rng.normal(0, 0.04, 3)
    img = mucosa + draw.smooth_noise(rng, size, 5, 3) * 0.06
    xs, ys = draw.grid(size)
    light = _centre(rng, size, 0.3)  # the light source: a bright lumen-side gradient
    img = img * (1.15 - 0.6 * np.hypot(xs - light[0], ys - light[1])[..., None] / size)
    for _ in range(int(rng.integers(2, 6))):  # mucosal folds: darker curved bands
        fold = draw.soften(draw.curve_mask(rng, size, rng.uniform(60, 160), 3, bend=0.4), 2.0)
        img = img * (1 - 0.3 * fold[..., None])
    radius = size * rng.uniform(0.1, 0.24)
    centre = _centre(rng, size, 0.25)
    mask, depth = draw.radial_blob(
        rng, size, centre, radius, rng.uniform(0.75, 1.35), rng.uniform(0, np.pi), roughness=0.35
    )
    # The polyp is mucosa lit from one side: a dome of shading, barely any colour change.
    d = np.clip(depth, 0, 1)
    a = rng.uniform(0, 2 * np.pi)
    side = ((xs - centre[0]) * np.cos(a) + (ys - centre[1]) * np.sin(a)) / radius
    shade = 1 + mask * (rng.uniform(0.08, 0.2) * np.sqrt(d) - 0.15 * side * d)
    tint = 1 + mask[..., None] * rng.normal(0, 0.04, 3)
    img = img * shade[..., None] * tint
    img = draw.blur(img, 0.8)
    for _ in range(int(rng.integers(3, 10))):  # specular highlights, also on the polyp
        spot, _ = draw.radial_blob(
            rng,
            size,
            _centre(rng, size, 0.05),
            size * rng.uniform(0.01, 0.04),
            rng.uniform(0.4, 2.5),
            rng.uniform(0, np.pi),
            roughness=0.4,
        )
        img = draw.blend(img, draw.soften(spot, 0.7), np.ones(3))
    img = img * _vignette(size, rng.uniform(0.7, 1.0), radius=0.6)
    return img, mask


def fundus(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The optic disc on a retina: a bright cup inside, vessels across, dark outside the FOV."""
    retina = np.array([0.72, 0.33, 0.14]) + rng.normal(0, 0.03, 3)
    img = retina + draw.smooth_noise(rng, size, 6, 3) * 0.05
    centre = (size * rng.uniform(0.3, 0.7), size * rng.uniform(0.35, 0.65))
    radius = size * rng.uniform(0.09, 0.15)
    mask, depth = draw.radial_blob(
        rng, size, centre, radius, rng.uniform(0.85, 1.2), rng.uniform(0, np.pi), roughness=0.15
    )
    disc = np.array([0.88, 0.62, 0.36]) + rng.normal(0, 0.03, 3)
    img = draw.blend(img, np.clip(depth / rng.uniform(0.2, 0.5), 0, 1) * 0.8, disc)
    cup, cdepth = draw.radial_blob(
        rng, size, centre, radius * rng.uniform(0.35, 0.65), rng.uniform(0.8, 1.25), roughness=0.2
    )
    img = draw.blend(img, draw.soften(cup, 0.8), np.array([0.98, 0.9, 0.72]))
    for _ in range(int(rng.integers(6, 12))):  # vessels leave the disc in all directions
        vessel = draw.curve_mask(
            rng, size, rng.uniform(40, 110), rng.uniform(1.2, 3.2), start=centre, bend=0.5
        )
        img = draw.blend(img, vessel * 0.8, np.array([0.45, 0.08, 0.05]))
    img = draw.blur(img, 0.6)
    xs, ys = draw.grid(size)
    fov = np.hypot(xs - size / 2, ys - size / 2) < size * rng.uniform(0.46, 0.52)
    img = img * draw.soften(fov, 1.0)[..., None]
    return img, mask & fov


def ultrasound(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A hypoechoic lesion in speckle, with an acoustic shadow or enhancement below it."""
    xs, ys = draw.grid(size)
    layers = 0.45 + 0.15 * np.sin(ys / size * rng.uniform(6, 14) + draw.smooth_noise(rng, size, 4))
    tissue = layers + 0.1 * draw.smooth_noise(rng, size, 8)
    radius = size * rng.uniform(0.12, 0.24)
    centre = (size * rng.uniform(0.3, 0.7), size * rng.uniform(0.35, 0.6))
    mask, depth = draw.radial_blob(
        rng, size, centre, radius, rng.uniform(1.0, 1.8), rng.uniform(-0.3, 0.3), roughness=0.5
    )
    echo = rng.uniform(0.35, 0.6)  # how much darker the lesion is than tissue
    tissue = tissue * (1 - echo * np.clip(depth / 0.3, 0, 1))
    # Posterior shadow (darker) or enhancement (brighter) below the lesion, as wide as it.
    cols = np.abs(xs - centre[0]) < radius * 0.8
    below = (ys > centre[1]) & cols & ~mask
    effect = rng.choice([-1, 1]) * rng.uniform(0.2, 0.45)
    tissue = tissue * (1 + effect * draw.soften(below, 3.0))
    speckle = rng.rayleigh(0.8, (size, size))
    img = np.clip(tissue * speckle, 0, 1.2)
    img = draw.blur(img[..., None], 0.7)
    apex = (size / 2, -size * 0.35)  # sector-shaped field of view of a curved probe
    ang = np.arctan2(xs - apex[0], ys - apex[1])
    rad = np.hypot(xs - apex[0], ys - apex[1])
    fov = (np.abs(ang) < 0.62) & (rad > size * 0.4) & (rad < size * 1.45)
    img = img * fov[..., None]
    return np.repeat(img, 3, axis=2), mask & fov


GENERATORS: dict[str, Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]] = {
    "dermoscopy": dermoscopy,
    "colonoscopy": colonoscopy,
    "fundus": fundus,
    "ultrasound": ultrasound,
}


def make_case(
    modality: str, index: int, seed: int = 0, scanner: int = 0, size: int = 128
) -> Sample:
    """Case ``index`` of a modality: a pure function of (modality, index, seed, scanner, size)."""
    if modality not in GENERATORS:
        raise ValueError(f"unknown modality {modality!r}; choose one of {', '.join(MODALITIES)}")
    rng = np.random.default_rng([seed, MODALITIES.index(modality), scanner, index])
    image, mask = GENERATORS[modality](rng, size)
    image = Scanner.from_id(modality, scanner).apply(image, rng, grey=modality == "ultrasound")
    name = f"{modality}-s{seed}-sc{scanner}-{index:05d}"
    return Sample(draw.to_uint8(np.broadcast_to(image, (size, size, 3))), mask, name)


def synthetic_dataset(
    modality: str, n: int, seed: int = 0, scanner: int = 0, size: int = 128
) -> SegmentationDataset:
    samples = [make_case(modality, i, seed, scanner, size) for i in range(n)]
    samples = [s for s in samples if s.mask.sum() >= 16]
    return SegmentationDataset(f"{modality}-sc{scanner}", samples)
