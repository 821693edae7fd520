"""Problems are kept per file but reported grouped: one line per kind, with a count and examples."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from baps_fed.data.problems import problem_kind, summarize_problems
from baps_fed.data.readers import open_dataset, read_generic, read_kvasir, read_optic_disc
from baps_fed.data.sample import DatasetError, Problem
from tests.data.test_readers import H, W, corrupt, disk, generic_dataset, rgb, save, save_mask


def jpeg_kvasir(root: Path, n: int) -> list[str]:
    """``n`` Kvasir-SEG-like pairs whose masks are JPEGs (so non-binary); the mask paths."""
    paths = []
    for i in range(n):
        save(root / "images" / f"k{i:02d}.jpg", rgb(i))
        mask = save(root / "masks" / f"k{i:02d}.jpg", disk(cx=10 + i % 12).astype(np.uint8) * 255)
        paths.append(str(mask))
    return paths


def test_fifty_jpeg_masks_give_one_line_with_count_and_three_examples(tmp_path, caplog):
    root = tmp_path / "Kvasir-SEG"
    mask_paths = jpeg_kvasir(root, 50)
    with caplog.at_level(logging.DEBUG, logger="baps_fed.data"):
        ds = read_kvasir(root)
    assert len(ds) == 50
    # the records stay complete: one Problem per file, with its own reason
    assert [p.path for p in ds.problems] == mask_paths
    assert all("non-binary mask" in p.reason for p in ds.problems)
    assert {p.action for p in ds.problems} == {"thresholded at 128"}

    (line,) = summarize_problems(ds.problems)
    assert line.startswith("non-binary mask (e.g. JPEG artefacts), thresholded at 128: 50 files")
    assert line.endswith(f"e.g. {', '.join(mask_paths[:3])}, ... (47 more)")
    assert mask_paths[3] not in line

    # the log: one grouped warning, each file at DEBUG only
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [line]
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(debug) == 50


def test_examples_parameter(tmp_path):
    mask_paths = jpeg_kvasir(tmp_path / "kvasir", 5)
    problems = read_kvasir(tmp_path / "kvasir").problems
    (one,) = summarize_problems(problems, examples=1)
    assert one.endswith(f": 5 files, e.g. {mask_paths[0]}, ... (4 more)")
    (all_five,) = summarize_problems(problems, examples=5)
    assert all_five.endswith(f"e.g. {', '.join(mask_paths)}") and "more" not in all_five
    (none,) = summarize_problems(problems, examples=0)
    assert none.endswith(": 5 files")


def test_single_problem_keeps_its_full_line():
    p = Problem("/d/masks/a.png", "empty mask: no foreground to place a positive point on", "x")
    assert summarize_problems([p]) == [f"{p.path}: {p.reason} ({p.action})"]
    assert summarize_problems([]) == []


def test_grouped_by_kind_and_action_in_order_of_first_appearance():
    def nb(name: str, levels: int, action: str = "thresholded at 128") -> Problem:
        reason = f"non-binary mask ({levels} distinct values: 0, 1, ...; e.g. JPEG artefacts)"
        return Problem(f"/d/{name}", reason, action)

    empty = "empty mask: no foreground to place a positive point on"
    problems = [
        nb("a.jpg", 7),
        Problem("/d/e1.png", empty, "skipped"),
        nb("b.jpg", 12),  # other details, same kind: grouped
        nb("c.png", 3, action="thresholded at 32768"),  # same kind, other action: apart
        Problem("/d/e2.png", empty, "skipped"),
    ]
    lines = summarize_problems(problems)
    assert lines == [
        "non-binary mask (e.g. JPEG artefacts), thresholded at 128: 2 files, e.g. /d/a.jpg, "
        "/d/b.jpg",
        "empty mask: no foreground to place a positive point on, skipped: 2 files, e.g. "
        "/d/e1.png, /d/e2.png",
        f"/d/c.png: {problems[3].reason} (thresholded at 32768)",
    ]


def test_unknown_reasons_group_by_their_text_without_the_path():
    problems = [
        Problem("/d/a.png", "odd file /d/a.png", "skipped"),
        Problem("/d/b.png", "odd file /d/b.png", "skipped"),
        Problem("/d/c.png", "something else", "skipped"),
    ]
    assert problem_kind(problems[0]) == "odd file <file>"
    assert summarize_problems(problems) == [
        "odd file <file>, skipped: 2 files, e.g. /d/a.png, /d/b.png",
        "/d/c.png: something else (skipped)",
    ]


def test_every_reader_problem_has_a_known_kind(tmp_path):
    """Each reason the readers write maps to a named kind, whatever its per-file details."""
    g = tmp_path / "generic"
    generic_dataset(g, n=10)  # s5..s9 get their bad input below
    corrupt(g / "images" / "s0.png")
    corrupt(g / "masks" / "s1.png")
    save_mask(g / "masks" / "s2.png", disk(h=12, w=16, cx=8, cy=6, r=3))
    save_mask(g / "masks" / "s3.png", disk(h=10, w=10, cx=5, cy=5, r=3))
    for name in ("s4", "s5"):
        save_mask(g / "masks" / f"{name}.png", np.zeros((H, W), bool))
    for name, halo in (("s6", 40), ("s7", 90)):
        values = disk().astype(np.uint8) * 250
        values[~disk() & disk(r=9)] = halo
        save(g / "masks" / f"{name}.png", values)
    for name in ("s8", "s9"):
        save(g / "images" / f"{name}.jpg", rgb())  # a second image with the same stem
    for name in ("lonely1", "lonely2"):
        save(g / "images" / f"{name}.png", rgb())
    for name in ("orphan1", "orphan2"):
        save_mask(g / "masks" / f"{name}.png", disk())
    ds = read_generic(g)
    known = {
        "unreadable or corrupt file",
        "mask size differs from its image's",
        "empty mask: no foreground to place a positive point on",
        "non-binary mask (e.g. JPEG artefacts)",
        "several files share a name stem",
        "image without a mask",
        "mask without an image",
    }
    assert {problem_kind(p) for p in ds.problems} == known
    counts = {line.split(", e.g. ")[0] for line in summarize_problems(ds.problems)}
    assert counts == {
        "several files share a name stem, skipped: 4 files",  # s8, s9 (.png and .jpg)
        "image without a mask, skipped: 2 files",
        "mask without an image, skipped: 4 files",  # the orphans, and the masks of s8, s9
        "unreadable or corrupt file, skipped: 2 files",
        "mask size differs from its image's, skipped: 2 files",
        "empty mask: no foreground to place a positive point on, skipped: 2 files",
        "non-binary mask (e.g. JPEG artefacts), thresholded at 128: 2 files",
    }

    o = tmp_path / "refuge"
    for i, dark in enumerate((False, True, True)):
        save(o / "images" / f"g{i}.png", rgb(i))
        values = np.where(disk(r=8), 128, 255).astype(np.uint8)
        values[disk(r=3)] = 0
        if dark:  # a binary disc mask, disc bright: no cup label
            values = np.where(disk(r=8), 255, 0).astype(np.uint8)
        else:
            values[0, :4] = (10, 20, 30, 40)  # noise: more than three levels
        save(o / "gts" / f"g{i}.png", values)
    disc = read_optic_disc(o)
    assert {problem_kind(p) for p in disc.problems} == {"non-binary optic-disc mask"}
    cup = read_optic_disc(o, target="cup")
    kinds = [problem_kind(p) for p in cup.problems]
    assert kinds == ["non-binary optic-disc mask"] + ["binary disc mask with no cup label"] * 2


def test_strict_logs_the_repairs_met_before_it_stops(tmp_path, caplog):
    jpeg_kvasir(tmp_path / "kvasir", 4)
    corrupt(tmp_path / "kvasir" / "images" / "k03.jpg")
    with caplog.at_level(logging.WARNING), pytest.raises(DatasetError, match="k03.jpg"):
        open_dataset(tmp_path / "kvasir", strict=True)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith("non-binary mask (e.g. JPEG artefacts), thresholded at 128: 3 files")
