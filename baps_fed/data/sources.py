"""Turn a data source named on the command line or in a node config into a dataset.

A source is either a synthetic modality name (``colonoscopy``, ...; ``general`` is the FM's own
domain) or a folder on disk in one of the real layouts (see ``readers.open_dataset``), of which a
site may take a subset and keep groups whole in its splits (``manifest.restrict``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from baps_fed.data.general import general_dataset
from baps_fed.data.manifest import restrict
from baps_fed.data.modalities import MODALITIES, make_case, synthetic_dataset
from baps_fed.data.sample import SegmentationDataset

# Seed s of the ``general`` source draws cases GENERAL_SEED0 + s * GENERAL_SEED_STRIDE + i,
# i < n: a fixed stride keeps the datasets of different seeds disjoint whatever n each asks for
# (n must not exceed the stride). Seed 0 is the zero-shot evaluation set of
# simulations/eval_zero_shot.py; seeds >= 20 would reach the image-encoder corpus (40_000_000).
GENERAL_SEED0 = 20_000_000
GENERAL_SEED_STRIDE = 1_000_000
SYNTHETIC_SOURCES = (*MODALITIES, "general")  # every other source is a folder


def open_source(
    source: str,
    n: int = 200,
    seed: int = 0,
    scanner: int = 0,
    layout: str = "auto",
    size: int | None = None,
    subset: str = "",
    group_by: str = "",
) -> SegmentationDataset:
    """``size``: letterbox real images to size x size (synthetic cases are already 128 px);
    ``subset``, ``group_by``: the samples to use and the manifest column whose groups its splits
    keep whole (``manifest.restrict``; synthetic data has no manifest: either is an error there)."""
    return restrict(_open(source, n, seed, scanner, layout, size), subset, group_by)


def _open(
    source: str, n: int, seed: int, scanner: int, layout: str, size: int | None
) -> SegmentationDataset:
    if n < 1 and source in SYNTHETIC_SOURCES:
        raise ValueError(f"n must be a positive whole number of synthetic cases, got {n}")
    if source in MODALITIES:
        return synthetic_dataset(source, n, seed=seed, scanner=scanner)
    if source == "general":
        if n > GENERAL_SEED_STRIDE:
            raise ValueError(
                f"general source: n={n} cases; at most {GENERAL_SEED_STRIDE} per seed (more "
                "would overlap the next seed's cases): use several seeds instead"
            )
        return general_dataset(n, seed0=GENERAL_SEED0 + seed * GENERAL_SEED_STRIDE)
    from baps_fed.data.readers import open_dataset  # real layouts: only when a path is given

    return open_dataset(Path(source), layout=layout, size=size)


def write_synthetic_site(
    modality: str, out: Path, n: int, seed: int = 0, scanner: int = 0, size: int = 128
) -> int:
    """Write cases in the generic layout (images/NAME.png, masks/NAME.png with 0/255)."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; choose one of {', '.join(MODALITIES)}")
    if n < 1:
        raise ValueError(f"n must be a positive whole number of cases, got {n}")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    written = 0
    for i in tqdm(range(n), desc=f"{modality} -> {out}", unit="img"):
        case = make_case(modality, i, seed=seed, scanner=scanner, size=size)
        if case.mask.sum() < 16:
            continue
        Image.fromarray(case.image).save(out / "images" / f"{case.name}.png")
        Image.fromarray(case.mask.astype(np.uint8) * 255).save(out / "masks" / f"{case.name}.png")
        written += 1
    return written
