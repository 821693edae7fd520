"""Readers for segmentation datasets as they lie on disk, all sharing one loader.

Layouts: ``generic`` (images/ + masks/), ``isic2018`` (ISIC 2018 Task 1), ``kvasir``
(Kvasir-SEG), ``busi`` (BUSI ultrasound) and ``optic_disc`` (REFUGE-style fundus); ``open_dataset``
picks one from the folder's names. Every reader returns a ``SegmentationDataset`` of samples at
native size (or letterboxed to ``size`` while loading, so big datasets fit in memory), sorted
by name, plus the ``Problem`` list met on the way.

This module is the entry point: layout detection and ``open_dataset``. The readers themselves are
in ``layouts``, the loader they share in ``pairing``, problem collection and reporting in
``problems``, resizing in ``letterbox``; their public names are re-exported here.

Bad-input rules, the same for every reader (one loader, ``pairing.load``):

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
- every Problem is kept per file in ``SegmentationDataset.problems`` and logged at DEBUG; the
  warnings group them (``problems.summarize_problems``): a kind met once is one warning naming
  the file, a kind met by many files (every Kvasir-SEG mask) one warning with the count and a
  few example files;
- ``strict=True``: the first problem that would skip a file raises ``DatasetError`` instead;
  repairs (thresholding) never raise, since e.g. every Kvasir-SEG mask is a JPEG that needs one;
- no usable pair left, a missing folder, or no image files: ``DatasetError`` naming the folder,
  the number of files found, the first problems and the layout that was expected;
- the folder's optional ``manifest.csv`` gives each sample its row (``Sample.meta``); its own
  rules are in ``manifest``'s module docstring.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from baps_fed.data.layouts import (
    BUSI_CLASSES,
    BUSI_EXPECTED,
    GENERIC_EXPECTED,
    ISIC_DIR,
    ISIC_EXPECTED,
    ISIC_SPLITS,
    KVASIR_EXPECTED,
    OPTIC_EXPECTED,
    OPTIC_IMAGE_DIRS,
    OPTIC_MASK_DIRS,
    OpticTarget,
    read_busi,
    read_generic,
    read_isic2018,
    read_kvasir,
    read_optic_disc,
)
from baps_fed.data.letterbox import letterbox
from baps_fed.data.manifest import attach_manifest
from baps_fed.data.pairing import MaskDecoder, Pair, describe, require_dir, subdirs
from baps_fed.data.problems import summarize_problems
from baps_fed.data.sample import DatasetError, SegmentationDataset

__all__ = [
    "BUSI_CLASSES",
    "BUSI_EXPECTED",
    "GENERIC_EXPECTED",
    "ISIC_EXPECTED",
    "ISIC_SPLITS",
    "KVASIR_EXPECTED",
    "LAYOUT_HELP",
    "OPTIC_EXPECTED",
    "OPTIC_IMAGE_DIRS",
    "OPTIC_MASK_DIRS",
    "READERS",
    "MaskDecoder",
    "OpticTarget",
    "Pair",
    "detect_layout",
    "letterbox",
    "open_dataset",
    "read_busi",
    "read_generic",
    "read_isic2018",
    "read_kvasir",
    "read_optic_disc",
    "summarize_problems",
]

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


def _detect_here(folder: Path) -> str | None:
    names = {d.name.lower() for d in subdirs(folder)}
    if any(ISIC_DIR.match(n) and n.startswith("isic") for n in names):
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
    root = require_dir(Path(path), f"one of the supported layouts: {LAYOUT_HELP}")
    folder = root
    for _ in range(_WRAPPER_DEPTH):
        layout = _detect_here(folder)
        if layout is not None:
            return layout, folder
        children = subdirs(folder)
        if len(children) != 1:
            break
        folder = children[0]
    raise DatasetError(
        f"cannot tell the dataset layout of {root} (found: {describe(root)}). Supported "
        f"layouts: {LAYOUT_HELP}. Rearrange the folder, or pass layout=... explicitly."
    )


def open_dataset(path: str | Path, layout: str = "auto", **kw) -> SegmentationDataset:
    """Read the dataset at ``path`` with the reader for ``layout`` (``"auto"``: detect it).

    ``kw`` go to the reader: ``strict`` and ``size`` for all, ``split`` for isic2018,
    ``target`` for optic_disc. The folder's ``manifest.csv``, if any, is read with it (see
    ``manifest.attach_manifest``).
    """
    if layout == "auto":
        layout, path = detect_layout(path)
    reader = READERS.get(_ALIASES.get(layout, layout))
    if reader is None:
        raise DatasetError(
            f"unknown dataset layout {layout!r}; supported: "
            f"auto, {', '.join(READERS)} (aliases: {', '.join(_ALIASES)})"
        )
    ds = reader(path, **kw)
    ds.folder = str(path)
    return attach_manifest(ds, Path(path), kw.get("strict", False))
