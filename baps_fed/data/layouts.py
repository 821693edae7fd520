"""One reader per on-disk layout: generic, Kvasir-SEG, ISIC 2018, BUSI and REFUGE-style optic disc.

Each finds its folders and files and hands the pairs to the shared loader (``pairing``); the
bad-input rules are the same for all (``readers``' module docstring).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Literal

import numpy as np

from baps_fed.data.image_io import binarize_mask, distinct_values, half_level, read_mask_values
from baps_fed.data.pairing import (
    Pair,
    dataset_name,
    describe,
    find_subdir,
    index_by_key,
    list_images,
    load,
    pair_up,
    read_matched,
    require_dir,
    require_subdir,
    stem,
    subdirs,
)
from baps_fed.data.problems import ProblemLog
from baps_fed.data.sample import DatasetError, SegmentationDataset

OpticTarget = Literal["disc", "cup"]


# ---------------------------------------------------------------------------------------------
# Generic and Kvasir-SEG: images/ + masks/


GENERIC_EXPECTED = (
    "a folder with images/ and masks/ holding files with identical name stems "
    "(.png .jpg .jpeg .bmp .tif .tiff)"
)


def _read_images_and_masks(
    root: str | Path, kind: str, expected: str, strict: bool, size: int | None
) -> SegmentationDataset:
    """``root/images`` + ``root/masks`` matched by stem: the generic and Kvasir-SEG layouts."""
    root = require_dir(Path(root), expected)
    image_dir = require_subdir(root, ("images",), expected)
    mask_dir = require_subdir(root, ("masks",), expected)
    return read_matched(
        root,
        image_dir,
        mask_dir,
        name=dataset_name(root, kind),
        expected=expected,
        strict=strict,
        size=size,
    )


def read_generic(
    root: str | Path, *, strict: bool = False, size: int | None = None
) -> SegmentationDataset:
    """``root/images/*`` and ``root/masks/*`` matched by identical stems (any image suffix)."""
    return _read_images_and_masks(root, "generic", GENERIC_EXPECTED, strict, size)


KVASIR_EXPECTED = (
    "the Kvasir-SEG layout: images/*.jpg and masks/*.jpg with the same names "
    "(e.g. images/cju0qkwl35piu0993l0dewei2.jpg)"
)


def read_kvasir(
    root: str | Path, *, strict: bool = False, size: int | None = None
) -> SegmentationDataset:
    """Kvasir-SEG: ``root/images/*.jpg`` and ``root/masks/*.jpg`` with the same stems.

    Its masks are JPEGs, so they carry compression artefacts: they are thresholded at 128 and
    each one is recorded as a repair Problem (see ``image_io.read_mask``); the log shows them as
    one grouped warning (see ``problems.summarize_problems``).
    """
    return _read_images_and_masks(root, "kvasir", KVASIR_EXPECTED, strict, size)


# ---------------------------------------------------------------------------------------------
# ISIC 2018 Task 1


ISIC_EXPECTED = (
    "the ISIC 2018 Task 1 layout: ISIC2018_Task1-2_<Split>_Input/ISIC_0000000.jpg and "
    "ISIC2018_Task1_<Split>_GroundTruth/ISIC_0000000_segmentation.png, <Split> one "
    "of Training, Validation, Test"
)
ISIC_SPLITS = ("Training", "Validation", "Test")
ISIC_DIR = re.compile(r"^(?P<head>.*?)_(?P<kind>input|groundtruth)$", re.IGNORECASE)


def _isic_dirs(root: Path, split: str) -> tuple[Path, Path]:
    """The split's Input and GroundTruth folders: by split name, else the only pair present."""
    inputs, truths = [], []
    for d in subdirs(root):
        m = ISIC_DIR.match(d.name)
        if m:
            (inputs if m["kind"].lower() == "input" else truths).append(d)

    ins, gts = _of_split(inputs, split), _of_split(truths, split)
    if len(ins) == 1 and len(gts) == 1:
        return ins[0], gts[0]
    if len(inputs) == 1 and len(truths) == 1:
        other = [s for s in ISIC_SPLITS if _of_split([*inputs, *truths], s)]
        if not other:  # a lone, split-less pair (e.g. renamed folders): read it
            return inputs[0], truths[0]
        raise DatasetError(
            f"{root} holds the ISIC 2018 {other[0]!r} split ({inputs[0].name}, "
            f"{truths[0].name}), not {split!r}: pass split={other[0]!r}"
        )
    raise DatasetError(
        f"cannot find the ISIC 2018 {split!r} split in {root} (found: {describe(root)}). "
        f"Expected {ISIC_EXPECTED}; point at the folder holding them or choose split=..."
    )


def _of_split(dirs: list[Path], split: str) -> list[Path]:
    return [d for d in dirs if f"_{split.lower()}_" in d.name.lower() + "_"]


def _isic_mask_key(path: Path) -> str:
    return path.stem.removesuffix("_segmentation")


def _not_superpixels(path: Path) -> bool:
    return not path.stem.endswith("_superpixels")


def read_isic2018(
    root: str | Path, split: str = "Training", *, strict: bool = False, size: int | None = None
) -> SegmentationDataset:
    """ISIC 2018 Task 1 lesion segmentation.

    ``root`` holds ``ISIC2018_Task1-2_<split>_Input`` (``ISIC_0000000.jpg``) and
    ``ISIC2018_Task1_<split>_GroundTruth`` (``ISIC_0000000_segmentation.png``), split one of
    ``Training``, ``Validation``, ``Test``. A folder holding just one ``*_Input`` and one
    ``*_GroundTruth`` folder that name no split is read as they are; if they name another split,
    that is an error (pass that split) rather than a silent swap. Masks are matched with their
    ``_segmentation`` suffix stripped; ``*_superpixels.png`` files (ISIC 2017 inputs) are not
    images to segment and are left out, as are the LICENSE/ATTRIBUTION text files.
    The dataset is named after the Input folder, so splits stay distinguishable.
    """
    root = require_dir(Path(root), ISIC_EXPECTED)
    image_dir, mask_dir = _isic_dirs(root, split)
    return read_matched(
        root,
        image_dir,
        mask_dir,
        name=image_dir.name,
        expected=ISIC_EXPECTED,
        strict=strict,
        size=size,
        mask_key=_isic_mask_key,
        image_filter=_not_superpixels,
    )


# ---------------------------------------------------------------------------------------------
# BUSI breast ultrasound


BUSI_CLASSES = ("benign", "malignant", "normal")
BUSI_EXPECTED = (
    "the BUSI layout: benign/, malignant/ and normal/ folders holding "
    "'name.png' with 'name_mask.png' (and 'name_mask_1.png', ... for more lesions)"
)
_BUSI_MASK = re.compile(r"^(?P<base>.*)_mask(?:_\d+)?$")


def _busi_pairs(class_dir: Path, problems: ProblemLog) -> tuple[list[Pair], int]:
    """One class folder's pairs (all of an image's masks together) and its file count."""
    files = list_images(class_dir)
    images = index_by_key([p for p in files if not _BUSI_MASK.match(p.stem)], stem, problems)
    mask_files = index_by_key([p for p in files if _BUSI_MASK.match(p.stem)], stem, problems)
    masks: dict[str, tuple[Path, ...]] = {}
    for mask_stem, path in sorted(mask_files.items()):
        base = _BUSI_MASK.match(mask_stem)["base"]  # type: ignore[index]
        masks[base] = (*masks.get(base, ()), path)
    pairs = pair_up(
        images,
        masks,
        problems,
        mask_hint=f"'{{key}}_mask.png' in {class_dir}",
        image_hint=f"'{{key}}.png' in {class_dir}",
    )
    prefixed = [Pair(f"{class_dir.name}/{p.name}", p.image, p.masks) for p in pairs]
    return prefixed, len(files)


def read_busi(
    root: str | Path, *, strict: bool = False, size: int | None = None
) -> SegmentationDataset:
    """BUSI breast ultrasound: ``root/{benign,malignant,normal}/``.

    Each image ``name.png`` has ``name_mask.png`` and possibly ``name_mask_1.png``, ... (one per
    lesion); they are merged with logical OR. Samples are named ``<class>/<stem>``, e.g.
    ``benign/benign (1)``. Images in ``normal/`` show no lesion, so their masks are empty and
    they are skipped as empty masks (one Problem each), like any other empty mask.
    """
    root = require_dir(Path(root), BUSI_EXPECTED)
    class_dirs = [d for d in (find_subdir(root, (c,)) for c in BUSI_CLASSES) if d is not None]
    if not class_dirs:
        raise DatasetError(
            f"{root} has none of the BUSI class folders {BUSI_CLASSES} "
            f"(found: {describe(root)}). Expected {BUSI_EXPECTED}."
        )
    problems = ProblemLog(strict)
    pairs: list[Pair] = []
    files_found = 0
    for class_dir in class_dirs:
        class_pairs, n_files = _busi_pairs(class_dir, problems)
        pairs += class_pairs
        files_found += n_files
    return load(
        pairs,
        problems,
        folder=root,
        name=dataset_name(root, "busi"),
        expected=BUSI_EXPECTED,
        files_found=files_found,
        size=size,
    )


# ---------------------------------------------------------------------------------------------
# REFUGE-style optic disc / cup


OPTIC_IMAGE_DIRS = ("images", "Images")
OPTIC_MASK_DIRS = ("masks", "gts", "Disc_Cup_Masks")
OPTIC_EXPECTED = (
    "a REFUGE-style optic disc layout: images/ (or Images/) and masks/ (or gts/, "
    "Disc_Cup_Masks/, searched recursively) with matching name stems; masks coded "
    "0 = cup, 128 = disc rim, 255 = background, or binary with the disc bright"
)


def decode_optic(path: Path, target: OpticTarget) -> tuple[np.ndarray, str | None]:
    """A disc or cup mask from an optic-disc label file.

    REFUGE encoding (background bright): 0 = cup, 128 = disc rim, 255 = background, cut at the
    midpoints between those levels so JPEG-ish noise is tolerated: disc = value < 192 (cup
    included), cup = value < 64. When most pixels are dark (< half the range) the file is instead
    a plain binary disc mask with the disc bright (other optic-disc datasets): disc = its
    foreground by ``image_io.binarize_mask``; it has no cup, so asking for the cup rejects it.
    """
    values = read_mask_values(path)
    full = 2 * half_level(values)
    if np.count_nonzero(values < full / 2) * 2 > values.size:
        if target == "cup":
            raise DatasetError(
                f"optic-disc mask {path} has a dark background, i.e. a binary disc mask with no "
                "cup label: use target='disc', or REFUGE-coded masks (0 cup, 128 rim, 255 "
                "background) for the cup"
            )
        return binarize_mask(values)
    level = full / 4 if target == "cup" else 3 * full / 4
    levels = distinct_values(values).size
    note = None
    if levels > 3:
        note = (
            f"non-binary optic-disc mask ({levels} distinct values, expected 0/128/255); "
            f"thresholded at {level:g}"
        )
    return values < level, note


def read_optic_disc(
    root: str | Path, target: OpticTarget = "disc", *, strict: bool = False, size: int | None = None
) -> SegmentationDataset:
    """REFUGE-style fundus images with optic disc (or cup) masks.

    Images under ``root/images`` (or ``Images``), masks under ``root/masks`` (or ``gts``,
    ``Disc_Cup_Masks``), both searched recursively (e.g. ``Disc_Cup_Masks/Glaucoma/g0001.bmp``)
    and matched by stem. ``target="disc"`` gives the disc including the cup, ``"cup"`` the cup;
    the mask encoding is detected per file (see ``decode_optic``).
    """
    if target not in ("disc", "cup"):
        raise ValueError(f"unknown optic-disc target {target!r}; use 'disc' or 'cup'")
    root = require_dir(Path(root), OPTIC_EXPECTED)
    image_dir = require_subdir(root, OPTIC_IMAGE_DIRS, OPTIC_EXPECTED)
    mask_dir = require_subdir(root, OPTIC_MASK_DIRS, OPTIC_EXPECTED)
    return read_matched(
        root,
        image_dir,
        mask_dir,
        name=dataset_name(root, "optic_disc"),
        expected=OPTIC_EXPECTED,
        strict=strict,
        size=size,
        recursive=True,
        decode=functools.partial(decode_optic, target=target),
    )
