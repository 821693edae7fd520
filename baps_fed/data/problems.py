"""Problems met while reading a dataset: collected per file, reported grouped by kind.

Every skipped or repaired file stays its own ``Problem`` (``SegmentationDataset.problems``,
``config.json``'s ``data_problems``), but what is shown to the user groups repeated conditions:
Kvasir-SEG's 1,000 JPEG masks all need thresholding, and that is one line with a count and a few
example files (``summarize_problems``), not 1,000 identical warnings. Each file is still logged
at DEBUG level.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from baps_fed.data.sample import DatasetError, Problem

logger = logging.getLogger(__name__)

# Phrases that identify a kind of problem in a reason, and how a group of them is described.
# The reasons come from pairing.py (load_mask, load_pair, index_by_key, pair_up), image_io.py
# (ImageReadError, binarize_mask), layouts.py (decode_optic) and manifest.py (attach_manifest).
# A reason matching none of them is grouped with the reasons of identical text (its own path
# left out).
_KINDS: tuple[tuple[str, str], ...] = (
    ("cannot read image file", "unreadable or corrupt file"),
    ("re-export the mask at the image's size", "mask size differs from its image's"),
    ("non-binary optic-disc mask", "non-binary optic-disc mask"),
    ("non-binary mask", "non-binary mask (e.g. JPEG artefacts)"),
    ("empty mask", "empty mask: no foreground to place a positive point on"),
    ("files share the name", "several files share a name stem"),
    ("no mask found for image", "image without a mask"),
    ("no image found for mask", "mask without an image"),
    ("has a dark background", "binary disc mask with no cup label"),
    ("manifest row names no sample", "manifest row naming no sample"),
    ("is not listed in", "sample not listed in manifest.csv"),
)


def problem_kind(problem: Problem) -> str:
    """What went wrong, without the file-specific details: the key problems are grouped by."""
    for phrase, kind in _KINDS:
        if phrase in problem.reason:
            return kind
    return problem.reason.replace(problem.path, "<file>")


def _examples_text(paths: list[str], examples: int) -> str:
    if examples <= 0:
        return ""
    shown = ", ".join(paths[:examples])
    more = len(paths) - examples
    return f", e.g. {shown}, ... ({more} more)" if more > 0 else f", e.g. {shown}"


def summarize_problems(problems: Iterable[Problem], examples: int = 3) -> list[str]:
    """One line per kind of problem and action, in order of first appearance.

    A kind met once keeps its full line, ``"<path>: <reason> (<action>)"``; a kind met by several
    files becomes ``"<kind>, <action>: <n> files, e.g. <path>, <path>, <path>, ... (<m> more)"``
    with at most ``examples`` example paths. The per-file details stay in the Problems.
    """
    groups: dict[tuple[str, str], list[Problem]] = {}
    for problem in problems:
        groups.setdefault((problem_kind(problem), problem.action), []).append(problem)
    lines = []
    for (kind, action), group in groups.items():
        if len(group) == 1:
            (p,) = group
            lines.append(f"{p.path}: {p.reason} ({p.action})")
        else:
            paths = [p.path for p in group]
            lines.append(f"{kind}, {action}: {len(group)} files{_examples_text(paths, examples)}")
    return lines


class ProblemLog:
    """Problems met while reading one dataset: recorded, raised at once in strict mode, and
    logged (each file at DEBUG; ``report`` logs the grouped summary as warnings)."""

    def __init__(self, strict: bool):
        self.strict = strict
        self.items: list[Problem] = []
        self._reported = 0

    def skip(self, path: Path | str, reason: str) -> None:
        self.add(Problem(str(path), reason, "skipped"))

    def add(self, problem: Problem) -> None:
        if self.strict and problem.action == "skipped":
            self.report()
            raise DatasetError(
                f"{problem.path}: {problem.reason} (strict=True stops at the first problem; "
                "fix the file, or pass strict=False to skip such files and report them)"
            )
        logger.debug("%s: %s [%s]", problem.path, problem.reason, problem.action)
        self.items.append(problem)

    def report(self) -> None:
        """Log the problems added since the last report, grouped (see ``summarize_problems``)."""
        for line in summarize_problems(self.items[self._reported :]):
            logger.warning("%s", line)
        self._reported = len(self.items)


def note_to_problem(path: Path, note: str) -> Problem:
    """A decoder's ``"<what was wrong>; <what was done>"`` note as a Problem."""
    reason, _, action = note.rpartition("; ")
    return Problem(str(path), reason or note, action or "repaired")
