"""Readers for segmentation datasets as they lie on disk, all sharing one loader.

Layouts: ``generic`` (images/ + masks/), ``isic2018`` (ISIC 2018 Task 1), ``kvasir``
(Kvasir-SEG), ``busi`` (BUSI ultrasound) and ``optic_disc`` (REFUGE-style fundus); ``open_dataset``
picks one from the folder's names. Every reader returns a ``SegmentationDataset`` of samples at
native size (or letterboxed to ``size`` while loading, so big datasets fit in memory), sorted
by name, plus the ``Problem`` list met on the way.

Bad-input rules, the same for every reader (one loader, ``_load``):

- an unreadable/corrupt image or mask: the pair is skipped, Problem(file, why, "skipped");
- a mask whose size differs from its image: skipped; the Problem names both files and sizes;
- an empty mask (no foreground): skipped, since no positive point can be placed on it;
- a non-binary mask: repaired by thresholding (see ``image_io.read_mask``), kept, and recorded
  as Problem(mask, why, "thresholded at 128");
- a grayscale, palette or RGBA image: converted to RGB (see ``image_io.read_image``); this is not
  a Problem because nothing the model uses is lost;
- an image with no mask, a mask with no image, or two files with the same name stem: each file is
  recorded as a skipped Problem, never silently dropped;
- files without an image suffix (LICENSE.txt, .csv, ...) and hidden files (``._x.jpg``) are not
  dataset files and are ignored;
- every Problem is also logged with ``logging.warning`` naming the file;
- ``strict=True``: the first problem that would skip a file raises ``DatasetError`` instead;
  repairs (thresholding) never raise, since e.g. every Kvasir-SEG mask is a JPEG that needs one;
- no usable pair left, a missing folder, or no image files: ``DatasetError`` naming the folder,
  the number of files found, the first problems and the layout that was expected.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from baps_fed.data.image_io import (
    binarize_mask,
    distinct_values,
    half_level,
    is_image_file,
    read_image,
    read_mask,
    read_mask_values,
)
from baps_fed.data.sample import DatasetError, Problem, Sample, SegmentationDataset

logger = logging.getLogger(__name__)

MaskDecoder = Callable[[Path], tuple[np.ndarray, str | None]]
OpticTarget = Literal["disc", "cup"]

_SHOWN_PROBLEMS = 5


# ---------------------------------------------------------------------------------------------
# The shared loader


@dataclass(frozen=True)
class Pair:
    """One sample to load: an image and its mask file(s), merged by logical OR."""

    name: str
    image: Path
    masks: tuple[Path, ...]


class _Problems:
    """Problems met while reading: recorded, logged, and raised at once in strict mode."""

    def __init__(self, strict: bool):
        self.strict = strict
        self.items: list[Problem] = []

    def skip(self, path: Path | str, reason: str) -> None:
        self.add(Problem(str(path), reason, "skipped"))

    def add(self, problem: Problem) -> None:
        if self.strict and problem.action == "skipped":
            raise DatasetError(
                f"{problem.path}: {problem.reason} (strict=True stops at the first problem; "
                "fix the file, or pass strict=False to skip such files and report them)"
            )
        logger.warning("%s: %s [%s]", problem.path, problem.reason, problem.action)
        self.items.append(problem)


def _note_to_problem(path: Path, note: str) -> Problem:
    """A decoder's ``"<what was wrong>; <what was done>"`` note as a Problem."""
    reason, _, action = note.rpartition("; ")
    return Problem(str(path), reason or note, action or "repaired")


def _size_text(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[0]}"


def _load_mask(
    pair: Pair, shape: tuple[int, ...], decode: MaskDecoder, problems: _Problems
) -> np.ndarray | None:
    """The OR of a pair's masks, or None (with a Problem recorded) when one is unusable."""
    merged = np.zeros(shape[:2], dtype=bool)
    for path in pair.masks:
        try:
            mask, note = decode(path)
        except DatasetError as err:  # ImageReadError, or a decoder rejecting the encoding
            problems.skip(path, str(err))
            return None
        if mask.shape != shape[:2]:
            problems.skip(
                path,
                (
                    f"mask {path} is {_size_text(mask.shape)} (WxH) but image {pair.image} is "
                    f"{_size_text(shape)}: re-export the mask at the image's size"
                ),
            )
            return None
        if note:
            problems.add(_note_to_problem(path, note))
        merged |= mask
    return merged


def _load_pair(pair: Pair, decode: MaskDecoder, problems: _Problems) -> Sample | None:
    try:
        image = read_image(pair.image)
    except DatasetError as err:
        problems.skip(pair.image, str(err))
        return None
    mask = _load_mask(pair, image.shape, decode, problems)
    if mask is None:
        return None
    if not mask.any():
        where = ", ".join(str(p) for p in pair.masks)
        problems.add(
            Problem(where, "empty mask: no foreground to place a positive point on", "skipped")
        )
        return None
    return Sample(image, mask, pair.name)


def _no_samples_error(
    folder: Path, files_found: int, problems: list[Problem], expected: str
) -> DatasetError:
    shown = "".join(f"\n  - {p.path}: {p.reason}" for p in problems[:_SHOWN_PROBLEMS])
    more = len(problems) - _SHOWN_PROBLEMS
    tail = f"\n  ... and {more} more" if more > 0 else ""
    first = f" First problems:{shown}{tail}" if problems else ""
    return DatasetError(
        f"no usable image/mask pairs in {folder} ({files_found} image/mask files found). "
        f"Expected {expected}.{first}"
    )


def _load(
    pairs: Iterable[Pair],
    problems: _Problems,
    *,
    folder: Path,
    name: str,
    expected: str,
    files_found: int,
    decode: MaskDecoder = read_mask,
    size: int | None = None,
) -> SegmentationDataset:
    """Load every pair under the bad-input rules in the module docstring, sorted by name."""
    samples = []
    for pair in sorted(pairs, key=lambda p: p.name):
        sample = _load_pair(pair, decode, problems)
        if sample is not None:
            samples.append(sample if size is None else letterbox(sample, size))
    if not samples:
        raise _no_samples_error(folder, files_found, problems.items, expected)
    return SegmentationDataset(name, samples, problems.items)


# ---------------------------------------------------------------------------------------------
# Finding files and matching them by name


def _require_dir(root: Path, expected: str) -> Path:
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DatasetError(f"dataset folder {root} {what}. Expected {expected}.")
    return root


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _find_subdir(folder: Path, names: Iterable[str]) -> Path | None:
    """The first child folder named like one of ``names`` (case-insensitive)."""
    children = {p.name.lower(): p for p in _subdirs(folder)}
    return next((children[n.lower()] for n in names if n.lower() in children), None)


def _require_subdir(folder: Path, names: tuple[str, ...], expected: str) -> Path:
    found = _find_subdir(folder, names)
    if found is None:
        raise DatasetError(
            f"{folder} has no {' or '.join(repr(n + '/') for n in names)} folder "
            f"(found: {_describe(folder)}). Expected {expected}."
        )
    return found


def _list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (and below it when ``recursive``), sorted."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p
        for p in found
        if p.is_file()
        and is_image_file(p)
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _index(paths: list[Path], key: Callable[[Path], str], problems: _Problems) -> dict[str, Path]:
    """Files by matching key; files sharing a key are ambiguous and all skipped (reported)."""
    groups: dict[str, list[Path]] = {}
    for path in paths:
        groups.setdefault(key(path), []).append(path)
    for k, group in groups.items():
        if len(group) > 1:
            names = ", ".join(str(p) for p in group)
            for path in group:
                problems.skip(
                    path,
                    f"{len(group)} files share the name {k!r} ({names}): keep only one of them",
                )
    return {k: group[0] for k, group in groups.items() if len(group) == 1}


def _pair_up(
    images: dict[str, Path],
    masks: dict[str, tuple[Path, ...]],
    problems: _Problems,
    mask_hint: str,
    image_hint: str,
) -> list[Pair]:
    """Pairs for keys present on both sides; every unmatched file is recorded as a Problem."""
    for key in sorted(images.keys() - masks.keys()):
        hint = mask_hint.format(key=key)
        problems.skip(
            images[key],
            f"no mask found for image {images[key]} (looked for {hint}): "
            "add the mask or remove the image",
        )
    for key in sorted(masks.keys() - images.keys()):
        hint = image_hint.format(key=key)
        for path in masks[key]:
            problems.skip(
                path,
                f"no image found for mask {path} (looked for {hint}): "
                "add the image or remove the mask",
            )
    return [Pair(key, images[key], masks[key]) for key in sorted(images.keys() & masks.keys())]


def _stem(path: Path) -> str:
    return path.stem


def _read_matched(
    root: Path,
    image_dir: Path,
    mask_dir: Path,
    *,
    name: str,
    expected: str,
    strict: bool,
    size: int | None,
    recursive: bool = False,
    mask_key: Callable[[Path], str] = _stem,
    image_filter: Callable[[Path], bool] | None = None,
    decode: MaskDecoder = read_mask,
) -> SegmentationDataset:
    """Images and masks in two folders, matched by (mask) name stem, then loaded."""
    problems = _Problems(strict)
    image_files = [
        p for p in _list_images(image_dir, recursive) if image_filter is None or image_filter(p)
    ]
    mask_files = _list_images(mask_dir, recursive)
    images = _index(image_files, _stem, problems)
    masks = {k: (p,) for k, p in _index(mask_files, mask_key, problems).items()}
    pairs = _pair_up(
        images,
        masks,
        problems,
        mask_hint=f"a mask for {{key!r}} in {mask_dir}",
        image_hint=f"an image named {{key!r}} in {image_dir}",
    )
    return _load(
        pairs,
        problems,
        folder=root,
        name=name,
        expected=expected,
        files_found=len(image_files) + len(mask_files),
        decode=decode,
        size=size,
    )


def _dataset_name(root: Path, fallback: str) -> str:
    return root.resolve().name or fallback


# ---------------------------------------------------------------------------------------------
# Readers


GENERIC_EXPECTED = (
    "a folder with images/ and masks/ holding files with identical name stems "
    "(.png .jpg .jpeg .bmp .tif .tiff)"
)


def _read_images_and_masks(
    root: str | Path, kind: str, expected: str, strict: bool, size: int | None
) -> SegmentationDataset:
    """``root/images`` + ``root/masks`` matched by stem: the generic and Kvasir-SEG layouts."""
    root = _require_dir(Path(root), expected)
    image_dir = _require_subdir(root, ("images",), expected)
    mask_dir = _require_subdir(root, ("masks",), expected)
    return _read_matched(
        root,
        image_dir,
        mask_dir,
        name=_dataset_name(root, kind),
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
    each one is recorded as a repair Problem (see ``image_io.read_mask``).
    """
    return _read_images_and_masks(root, "kvasir", KVASIR_EXPECTED, strict, size)


ISIC_EXPECTED = (
    "the ISIC 2018 Task 1 layout: ISIC2018_Task1-2_<Split>_Input/ISIC_0000000.jpg and "
    "ISIC2018_Task1_<Split>_GroundTruth/ISIC_0000000_segmentation.png, <Split> one "
    "of Training, Validation, Test"
)
ISIC_SPLITS = ("Training", "Validation", "Test")
_ISIC_DIR = re.compile(r"^(?P<head>.*?)_(?P<kind>input|groundtruth)$", re.IGNORECASE)


def _isic_dirs(root: Path, split: str) -> tuple[Path, Path]:
    """The split's Input and GroundTruth folders: by split name, else the only pair present."""
    inputs, truths = [], []
    for d in _subdirs(root):
        m = _ISIC_DIR.match(d.name)
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
        f"cannot find the ISIC 2018 {split!r} split in {root} (found: {_describe(root)}). "
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
    root = _require_dir(Path(root), ISIC_EXPECTED)
    image_dir, mask_dir = _isic_dirs(root, split)
    return _read_matched(
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


BUSI_CLASSES = ("benign", "malignant", "normal")
BUSI_EXPECTED = (
    "the BUSI layout: benign/, malignant/ and normal/ folders holding "
    "'name.png' with 'name_mask.png' (and 'name_mask_1.png', ... for more lesions)"
)
_BUSI_MASK = re.compile(r"^(?P<base>.*)_mask(?:_\d+)?$")


def _busi_pairs(class_dir: Path, problems: _Problems) -> tuple[list[Pair], int]:
    """One class folder's pairs (all of an image's masks together) and its file count."""
    files = _list_images(class_dir)
    images = _index([p for p in files if not _BUSI_MASK.match(p.stem)], _stem, problems)
    mask_files = _index([p for p in files if _BUSI_MASK.match(p.stem)], _stem, problems)
    masks: dict[str, tuple[Path, ...]] = {}
    for stem, path in sorted(mask_files.items()):
        base = _BUSI_MASK.match(stem)["base"]  # type: ignore[index]
        masks[base] = (*masks.get(base, ()), path)
    pairs = _pair_up(
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
    root = _require_dir(Path(root), BUSI_EXPECTED)
    class_dirs = [d for d in (_find_subdir(root, (c,)) for c in BUSI_CLASSES) if d is not None]
    if not class_dirs:
        raise DatasetError(
            f"{root} has none of the BUSI class folders {BUSI_CLASSES} "
            f"(found: {_describe(root)}). Expected {BUSI_EXPECTED}."
        )
    problems = _Problems(strict)
    pairs: list[Pair] = []
    files_found = 0
    for class_dir in class_dirs:
        class_pairs, n_files = _busi_pairs(class_dir, problems)
        pairs += class_pairs
        files_found += n_files
    return _load(
        pairs,
        problems,
        folder=root,
        name=_dataset_name(root, "busi"),
        expected=BUSI_EXPECTED,
        files_found=files_found,
        size=size,
    )


OPTIC_IMAGE_DIRS = ("images", "Images")
OPTIC_MASK_DIRS = ("masks", "gts", "Disc_Cup_Masks")
OPTIC_EXPECTED = (
    "a REFUGE-style optic disc layout: images/ (or Images/) and masks/ (or gts/, "
    "Disc_Cup_Masks/, searched recursively) with matching name stems; masks coded "
    "0 = cup, 128 = disc rim, 255 = background, or binary with the disc bright"
)


def _decode_optic(path: Path, target: OpticTarget) -> tuple[np.ndarray, str | None]:
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
    the mask encoding is detected per file (see ``_decode_optic``).
    """
    if target not in ("disc", "cup"):
        raise ValueError(f"unknown optic-disc target {target!r}; use 'disc' or 'cup'")
    root = _require_dir(Path(root), OPTIC_EXPECTED)
    image_dir = _require_subdir(root, OPTIC_IMAGE_DIRS, OPTIC_EXPECTED)
    mask_dir = _require_subdir(root, OPTIC_MASK_DIRS, OPTIC_EXPECTED)
    return _read_matched(
        root,
        image_dir,
        mask_dir,
        name=_dataset_name(root, "optic_disc"),
        expected=OPTIC_EXPECTED,
        strict=strict,
        size=size,
        recursive=True,
        decode=functools.partial(_decode_optic, target=target),
    )


# ---------------------------------------------------------------------------------------------
# Choosing a reader


READERS: dict[str, Callable[..., SegmentationDataset]] = {
    "generic": read_generic,
    "isic2018": read_isic2018,
    "kvasir": read_kvasir,
    "busi": read_busi,
    "optic_disc": read_optic_disc,
}
_ALIASES = {"isic": "isic2018", "refuge": "optic_disc", "kvasir-seg": "kvasir"}
LAYOUT_HELP = (
    f"isic2018 ({ISIC_EXPECTED}); busi ({BUSI_EXPECTED}); optic_disc "
    f"({OPTIC_EXPECTED}); kvasir ({KVASIR_EXPECTED}); generic ({GENERIC_EXPECTED})"
)
_WRAPPER_DEPTH = 3


def _describe(folder: Path, limit: int = 12) -> str:
    """What a folder holds, for error messages: its first entries and how many files."""
    entries = sorted(folder.iterdir())
    shown = [p.name + ("/" if p.is_dir() else "") for p in entries[:limit]]
    if len(entries) > limit:
        shown.append(f"... {len(entries) - limit} more")
    n_files = sum(p.is_file() for p in entries)
    return f"{', '.join(shown) or 'nothing'}; {n_files} files"


def _detect_here(folder: Path) -> str | None:
    names = {d.name.lower() for d in _subdirs(folder)}
    if any(_ISIC_DIR.match(n) and n.startswith("isic") for n in names):
        return "isic2018"
    if names & set(BUSI_CLASSES):
        return "busi"
    has_images = bool(names & {n.lower() for n in OPTIC_IMAGE_DIRS})
    if has_images and names & {"gts", "disc_cup_masks"}:
        return "optic_disc"
    if has_images and "masks" in names:
        named = "kvasir" in folder.resolve().name.lower()
        return "kvasir" if named or (folder / "kavsir_bboxes.json").exists() else "generic"
    return None


def detect_layout(path: str | Path) -> tuple[str, Path]:
    """The layout of ``path`` and the folder it applies to.

    Looks at folder names: ``ISIC*_Input``/``ISIC*_GroundTruth`` -> isic2018; benign/,
    malignant/ or normal/ -> busi; images/ with gts/ or Disc_Cup_Masks/ -> optic_disc; images/
    with masks/ -> kvasir when the folder is named like Kvasir or holds kavsir_bboxes.json, else
    generic. A folder with nothing recognisable but a single subfolder (as archives unpack, e.g.
    ``Dataset_BUSI_with_GT/``) is looked into, up to three levels.
    """
    root = _require_dir(Path(path), f"one of the supported layouts: {LAYOUT_HELP}")
    folder = root
    for _ in range(_WRAPPER_DEPTH):
        layout = _detect_here(folder)
        if layout is not None:
            return layout, folder
        children = _subdirs(folder)
        if len(children) != 1:
            break
        folder = children[0]
    raise DatasetError(
        f"cannot tell the dataset layout of {root} (found: {_describe(root)}). Supported "
        f"layouts: {LAYOUT_HELP}. Rearrange the folder, or pass layout=... explicitly."
    )


def open_dataset(path: str | Path, layout: str = "auto", **kw) -> SegmentationDataset:
    """Read the dataset at ``path`` with the reader for ``layout`` (``"auto"``: detect it).

    ``kw`` go to the reader: ``strict`` and ``size`` for all, ``split`` for isic2018,
    ``target`` for optic_disc.
    """
    if layout == "auto":
        layout, path = detect_layout(path)
    reader = READERS.get(_ALIASES.get(layout, layout))
    if reader is None:
        raise DatasetError(
            f"unknown dataset layout {layout!r}; supported: "
            f"auto, {', '.join(READERS)} (aliases: {', '.join(_ALIASES)})"
        )
    return reader(path, **kw)


# ---------------------------------------------------------------------------------------------
# Resizing


def _resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest-neighbour, falling back to "any overlap" when that would erase a small object."""
    as_image = Image.fromarray(mask.astype(np.uint8) * 255)
    resized = np.asarray(as_image.resize((width, height), Image.Resampling.NEAREST)) > 0
    if mask.any() and not resized.any():
        resized = np.asarray(as_image.resize((width, height), Image.Resampling.BOX)) > 0
    return resized


def letterbox(sample: Sample, size: int) -> Sample:
    """The sample with its longest side resized to ``size``, zero-padded at bottom/right to
    ``size`` x ``size``, as SAM pads its input (so pixel coordinates keep their origin).

    Image: bilinear (Pillow); mask: nearest, except that an object nearest would erase keeps
    every pixel it overlaps, so the mask stays non-empty.
    """
    if size < 1:
        raise ValueError(f"letterbox size must be positive, got {size}")
    h, w = sample.mask.shape
    scale = size / max(h, w)
    nh, nw = max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale)))
    image = Image.fromarray(sample.image).resize((nw, nh), Image.Resampling.BILINEAR)
    out_image = np.zeros((size, size, 3), dtype=np.uint8)
    out_image[:nh, :nw] = np.asarray(image)
    out_mask = np.zeros((size, size), dtype=bool)
    out_mask[:nh, :nw] = _resize_mask(sample.mask, nw, nh)
    return Sample(out_image, out_mask, sample.name)
