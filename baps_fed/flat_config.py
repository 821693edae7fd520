"""Dataclass configs from flat key/value tables (Flower's run and node configs, TOML tables).

The dataclasses hold every default; a flat table names fields in their dashed form
("local-steps") or by field name. A key that names no field is an error that says where it came
from and the closest valid key: a misspelt setting must never fall back to the default silently.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigKeyError(ValueError):
    """A flat config holds a key that no setting has."""


def flat_keys(*classes: type) -> set[str]:
    """The dashed keys of every field with a default of these dataclasses."""
    return {
        f.name.replace("_", "-")
        for cls in classes
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.default is not dataclasses.MISSING
    }


def check_keys(config: Mapping[str, Any], valid: Iterable[str], where: str) -> None:
    """Raise ConfigKeyError for the first key of ``config`` that is not valid (dashed or with
    underscores), naming ``where`` it came from and the closest valid key."""
    valid = set(valid)
    for key in config:
        if key in valid or key.replace("_", "-") in valid:
            continue
        close = difflib.get_close_matches(key.replace("_", "-"), sorted(valid), n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(sorted(valid))}"
        raise ConfigKeyError(f"{where}: unknown key {key!r}; {hint}")


def require_positive(config: object, *names: str) -> None:
    """Counts a run cannot do without: refuse zero or negative before anything is paid for."""
    for name in names:
        value = getattr(config, name)
        if value < 1:
            key = name.replace("_", "-")
            raise ValueError(f"{key} must be a positive whole number, got {value}")


def values_from_flat(cls: type[T], config: Mapping[str, Any], skip: tuple[str, ...] = ()) -> dict:
    """The fields of dataclass ``cls`` found in ``config`` under their name or its dashed form
    ("local-steps"), converted to the type of the field's default. Keys of other settings are
    left alone: check a whole table with ``check_keys`` first."""
    values = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in skip or f.default is dataclasses.MISSING:
            continue
        for key in (f.name, f.name.replace("_", "-")):
            if key in config:
                values[f.name] = _coerce(config[key], type(f.default), key)
    return values


def _coerce(value: Any, kind: type, key: str) -> Any:
    if kind is bool and isinstance(value, str):  # bool("false") would be True
        if value.lower() not in ("true", "false"):
            raise ValueError(f"config {key}: expected true or false, got {value!r}")
        return value.lower() == "true"
    if kind is int and (isinstance(value, bool) or (isinstance(value, float) and value % 1)):
        # int(2.5) would be 2, int(True) 1: a count is given as a whole number
        raise ValueError(f"config {key}: expected a whole number, got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"config {key}: expected {kind.__name__}, got {value!r}") from None
