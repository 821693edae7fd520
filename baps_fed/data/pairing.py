"""The machinery every reader shares: find image/mask files, pair them by name, load the pairs.

A reader finds its folders, builds ``Pair``s (``read_matched`` for two folders matched by name
stem, or ``index_by_key`` + ``pair_up`` for its own scheme) and hands them to ``load``, which
applies the bad-input rules listed in ``readers``' module docstring.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from baps_fed.data.image_io import is_image_file, read_image, read_mask
from baps_fed.data.letterbox import letterbox
from baps_fed.data.problems import ProblemLog, note_to_problem
from baps_fed.data.sample import DatasetError, Problem, Sample, SegmentationDataset

MaskDecoder = Callable[[Path], tuple[np.ndarray, str | None]]

_SHOWN_PROBLEMS = 5


# ---------------------------------------------------------------------------------------------
# The shared loader


@dataclass(frozen=True)
class Pair:
    """One sample to load: an image and its mask file(s), merged by logical OR."""

    name: str
    image: Path
    masks: tuple[Path, ...]


def _size_text(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[0]}"


def _load_mask(
    pair: Pair, shape: tuple[int, ...], decode: MaskDecoder, problems: ProblemLog
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
            problems.add(note_to_problem(path, note))
        merged |= mask
    return merged


def _load_pair(pair: Pair, decode: MaskDecoder, problems: ProblemLog) -> Sample | None:
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


def load(
    pairs: Iterable[Pair],
    problems: ProblemLog,
    *,
    folder: Path,
    name: str,
    expected: str,
    files_found: int,
    decode: MaskDecoder = read_mask,
    size: int | None = None,
) -> SegmentationDataset:
    """Load every pair under the bad-input rules (``readers``' docstring), sorted by name.

    The problems met (here and while pairing) are logged once, grouped by kind, at the end.
    """
    samples = []
    try:
        for pair in sorted(pairs, key=lambda p: p.name):
            sample = _load_pair(pair, decode, problems)
            if sample is not None:
                samples.append(sample if size is None else letterbox(sample, size))
    finally:
        problems.report()
    if not samples:
        raise _no_samples_error(folder, files_found, problems.items, expected)
    return SegmentationDataset(name, samples, problems.items)


# ---------------------------------------------------------------------------------------------
# Finding files and matching them by name


def require_dir(root: Path, expected: str) -> Path:
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DatasetError(f"dataset folder {root} {what}. Expected {expected}.")
    return root


def subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def describe(folder: Path, limit: int = 12) -> str:
    """What a folder holds, for error messages: its first entries and how many files."""
    entries = sorted(folder.iterdir())
    shown = [p.name + ("/" if p.is_dir() else "") for p in entries[:limit]]
    if len(entries) > limit:
        shown.append(f"... {len(entries) - limit} more")
    n_files = sum(p.is_file() for p in entries)
    return f"{', '.join(shown) or 'nothing'}; {n_files} files"


def find_subdir(folder: Path, names: Iterable[str]) -> Path | None:
    """The first child folder named like one of ``names`` (case-insensitive)."""
    children = {p.name.lower(): p for p in subdirs(folder)}
    return next((children[n.lower()] for n in names if n.lower() in children), None)


def require_subdir(folder: Path, names: tuple[str, ...], expected: str) -> Path:
    found = find_subdir(folder, names)
    if found is None:
        raise DatasetError(
            f"{folder} has no {' or '.join(repr(n + '/') for n in names)} folder "
            f"(found: {describe(folder)}). Expected {expected}."
        )
    return found


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (and below it when ``recursive``), sorted."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p
        for p in found
        if p.is_file()
        and is_image_file(p)
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def index_by_key(
    paths: list[Path], key: Callable[[Path], str], problems: ProblemLog
) -> dict[str, Path]:
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


def pair_up(
    images: dict[str, Path],
    masks: dict[str, tuple[Path, ...]],
    problems: ProblemLog,
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


def stem(path: Path) -> str:
    return path.stem


def read_matched(
    root: Path,
    image_dir: Path,
    mask_dir: Path,
    *,
    name: str,
    expected: str,
    strict: bool,
    size: int | None,
    recursive: bool = False,
    mask_key: Callable[[Path], str] = stem,
    image_filter: Callable[[Path], bool] | None = None,
    decode: MaskDecoder = read_mask,
) -> SegmentationDataset:
    """Images and masks in two folders, matched by (mask) name stem, then loaded."""
    problems = ProblemLog(strict)
    image_files = [
        p for p in list_images(image_dir, recursive) if image_filter is None or image_filter(p)
    ]
    mask_files = list_images(mask_dir, recursive)
    images = index_by_key(image_files, stem, problems)
    masks = {k: (p,) for k, p in index_by_key(mask_files, mask_key, problems).items()}
    pairs = pair_up(
        images,
        masks,
        problems,
        mask_hint=f"a mask for {{key!r}} in {mask_dir}",
        image_hint=f"an image named {{key!r}} in {image_dir}",
    )
    return load(
        pairs,
        problems,
        folder=root,
        name=name,
        expected=expected,
        files_found=len(image_files) + len(mask_files),
        decode=decode,
        size=size,
    )


def dataset_name(root: Path, fallback: str) -> str:
    return root.resolve().name or fallback
