"""A data folder's optional ``manifest.csv``: facts about each sample, and what sites do with them.

The manifest sits in the dataset folder (beside ``images/`` and ``masks/``). Its ``name`` column
is the sample's name (the image file name without its suffix; ``<class>/<stem>`` for BUSI); any
other columns (sequence, patient, quality, ...) become the sample's ``Sample.meta``. A site uses
them to take part of a folder (``Subset``: ``subset = "sequence=1,2,3"``) and to keep groups
whole across its splits (``group_by = "sequence"``, see ``splits.split_dataset``).

Rules: a manifest that cannot be read (no ``name`` column, a row of the wrong width, a name twice)
is a ``DatasetError`` naming the file and line; a row naming no sample of the folder, or a sample
the manifest does not list, is a ``Problem`` like any other bad input (a skipped row raises under
``strict=True``).
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from baps_fed.data.problems import ProblemLog
from baps_fed.data.sample import DatasetError, Problem, Sample, SegmentationDataset

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.csv"
NAME_COLUMN = "name"
# Columns that name a unit of near-duplicate samples (one patient, one video): splitting such a
# folder by sample leaks a unit across train and test, so a split without group-by warns.
GROUP_COLUMNS = ("sequence", "patient", "study", "video", "group", "subject")
_SHOWN = 30  # values or names shown in a message


# ---------------------------------------------------------------------------------------------
# Reading the manifest


@dataclass(frozen=True)
class Manifest:
    path: Path
    columns: tuple[str, ...]  # besides name, in file order
    rows: dict[str, dict[str, str]]  # name -> its other columns


def _bad(path: Path, what: str) -> DatasetError:
    return DatasetError(
        f"{path}: {what}. A manifest is a UTF-8 CSV file with a header row holding a "
        f"{NAME_COLUMN!r} column (the sample's file name without its suffix) and any others; "
        "fix it, or remove it to read the folder without one"
    )


def _header(path: Path, header: list[str] | None) -> list[str]:
    if not header or not any(h.strip() for h in header):
        raise _bad(path, "it is empty (no header row)")
    columns = [h.strip() for h in header]
    if NAME_COLUMN not in columns:
        raise _bad(path, f"its header {columns} has no {NAME_COLUMN!r} column")
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice or "" in columns:
        raise _bad(path, f"its header {columns} repeats or leaves out column names")
    return columns


def read_manifest(path: Path) -> Manifest:
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a spreadsheet's byte-order mark
    except (OSError, UnicodeDecodeError) as err:
        raise _bad(path, f"cannot read it ({err})") from err
    lines = csv.reader(io.StringIO(text))
    try:
        columns = _header(path, next(lines, None))
        rows: dict[str, dict[str, str]] = {}
        first_line: dict[str, int] = {}
        for values in lines:
            if not any(v.strip() for v in values):
                continue  # blank line
            where = f"line {lines.line_num}"
            if len(values) != len(columns):
                raise _bad(path, f"{where} has {len(values)} fields, the header {len(columns)}")
            row = dict(zip(columns, (v.strip() for v in values), strict=True))
            name = row.pop(NAME_COLUMN)
            if not name:
                raise _bad(path, f"{where} has an empty {NAME_COLUMN!r}")
            if name in rows:
                raise _bad(path, f"{where} names {name!r} again (first on line {first_line[name]})")
            rows[name], first_line[name] = row, lines.line_num
    except csv.Error as err:
        raise _bad(path, f"not valid CSV at line {lines.line_num} ({err})") from err
    return Manifest(path, tuple(c for c in columns if c != NAME_COLUMN), rows)


def _already_reported(ds: SegmentationDataset) -> set[str]:
    """Name stems of files the reader skipped: a manifest row for one is no new problem."""
    return {Path(p.path).stem for p in ds.problems}


def attach_manifest(ds: SegmentationDataset, folder: Path, strict: bool) -> SegmentationDataset:
    """``ds`` with each sample's manifest row as its ``meta`` (``ds`` itself when ``folder``
    holds no manifest.csv); rows and samples that do not match are recorded as Problems."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return ds
    manifest = read_manifest(path)
    problems = ProblemLog(strict)
    names = {s.name for s in ds}
    skipped = _already_reported(ds)
    for name in sorted(manifest.rows.keys() - names):
        if Path(name).name not in skipped:
            problems.skip(
                f"{path} (row {name!r})",
                f"manifest row names no sample of {folder}: no image {name!r} with a mask there "
                "(the name is the image's file name without its suffix); remove the row, or "
                "add the image and its mask",
            )
    for name in sorted(names - manifest.rows.keys()):
        problems.add(
            Problem(
                f"{folder} ({name!r})",
                f"sample {name!r} is not listed in {path}",
                "kept without manifest values",
            )
        )
    problems.report()
    samples = [replace(s, meta=manifest.rows.get(s.name, {})) for s in ds]
    return ds.derive(samples, problems=[*ds.problems, *problems.items])


# ---------------------------------------------------------------------------------------------
# Columns and values present


def _natural(value: str) -> tuple:
    """Sort key: numbers by value (sequence 2 before 10), then text."""
    return (0, int(value), "") if value.isdigit() else (1, 0, value)


def _shown(items: list[str]) -> str:
    more = f", ... ({len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


def _columns(ds: SegmentationDataset) -> list[str]:
    return sorted({c for s in ds for c in s.meta})


def _values(ds: SegmentationDataset, column: str) -> list[str]:
    return sorted({s.meta[column] for s in ds if column in s.meta}, key=_natural)


def _require_column(ds: SegmentationDataset, column: str, purpose: str) -> None:
    columns = _columns(ds)
    if not columns:
        path = Path(ds.folder) / MANIFEST_FILE
        if not ds.folder:
            none = "synthetic data has none"
        elif path.is_file():
            none = f"{path} names none of its samples (see the problems reported)"
        else:
            none = f"there is no {path}"
        raise DatasetError(
            f"{ds.where}: {purpose} needs a {MANIFEST_FILE} in the data folder with a "
            f"{NAME_COLUMN!r} and a {column!r} column, and {none}"
        )
    if column not in columns:
        raise DatasetError(
            f"{ds.where}: {purpose}: its {MANIFEST_FILE} has no {column!r} column (columns: "
            f"{', '.join(columns)})"
        )


def group_values(ds: SegmentationDataset, column: str) -> list[str]:
    """Each sample's value of ``column``; every sample must have one, or it cannot be placed."""
    _require_column(ds, column, f"group-by {column!r}")
    missing = [s.name for s in ds if not s.meta.get(column)]
    if missing:
        raise DatasetError(
            f"{ds.where}: cannot keep {column!r} groups whole: {len(missing)} samples have no "
            f"{column!r} value in its {MANIFEST_FILE} ({_shown(missing)}): add them to the "
            "manifest, or remove those images"
        )
    return [s.meta[column] for s in ds]


_warned: set[tuple[str, str]] = set()


def warn_ungrouped(ds: SegmentationDataset) -> None:
    """Warn (once per folder and column) that a folder with a group-like manifest column is
    split sample by sample, so one group's near-duplicates may land in train and test."""
    for column in (c for c in GROUP_COLUMNS if c in _columns(ds)):
        if (ds.where, column) in _warned:
            continue
        _warned.add((ds.where, column))
        logger.warning(
            "%s: its %s has a %r column, but it is split sample by sample, so the samples of "
            "one %s may land in both train and test. Keep each %s in one split: set "
            'group-by = "%s" (site node config, scenario [[site]]) or --group-by %s',
            *(ds.where, MANIFEST_FILE, column, column, column, column, column),
        )


# ---------------------------------------------------------------------------------------------
# Subsets


SUBSET_SYNTAX = (
    "COLUMN=VALUE[,VALUE...] conditions joined by ';', every condition to hold "
    "(e.g. 'sequence=1,2,3' or 'quality=good;sequence=1,2')"
)


@dataclass(frozen=True)
class Subset:
    """The samples of a folder a site uses: those whose manifest row has, for every condition's
    column, one of its values. No conditions: every sample."""

    conditions: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @classmethod
    def parse(cls, text: str) -> Subset:
        """The one parser of the subset syntax (``SUBSET_SYNTAX``); "" is every sample."""
        conditions: list[tuple[str, tuple[str, ...]]] = []
        if not text.strip():
            return cls()
        for part in (p.strip() for p in text.split(";")):
            column, eq, values = part.partition("=")
            column = column.strip()
            vals = tuple(v.strip() for v in values.split(","))
            if not eq or not column or not all(vals):
                raise ValueError(f"subset {text!r}: cannot read {part!r}; expected {SUBSET_SYNTAX}")
            if column in dict(conditions):
                raise ValueError(
                    f"subset {text!r}: column {column!r} appears twice; join its values"
                )
            conditions.append((column, vals))
        return cls(tuple(conditions))

    def __str__(self) -> str:
        return ";".join(f"{c}={','.join(v)}" for c, v in self.conditions)

    def matches(self, sample: Sample) -> bool:
        return all(sample.meta.get(c) in values for c, values in self.conditions)


def _check_condition(ds: SegmentationDataset, subset: Subset, column: str, values) -> None:
    _require_column(ds, column, f"subset {str(subset)!r}")
    present = _values(ds, column)
    absent = [v for v in values if v not in present]
    if absent:
        raise DatasetError(
            f"{ds.where}: subset {str(subset)!r}: no sample has {column} = "
            f"{', '.join(absent)}; the {column!r} values present are: {_shown(present)}"
        )


def restrict(ds: SegmentationDataset, subset: str = "", group_by: str = "") -> SegmentationDataset:
    """The samples of ``ds`` a site uses (``subset``, see ``Subset``), to be split keeping the
    groups of manifest column ``group_by`` whole; both checked against its manifest here, so a
    typo fails when the data is opened, not at the first split."""
    chosen = Subset.parse(subset)
    for column, values in chosen.conditions:
        _check_condition(ds, chosen, column, values)
    if chosen.conditions:
        samples = [s for s in ds if chosen.matches(s)]
        if not samples:
            raise DatasetError(
                f"{ds.where}: subset {str(chosen)!r} matches no sample (each condition matches "
                "some, but no sample meets all of them)"
            )
        ds = ds.derive(samples, name=f"{ds.name}[{chosen}]")
    if group_by:
        group_values(ds, group_by)
        ds = ds.derive(ds.samples, group_by=group_by)
    return ds
