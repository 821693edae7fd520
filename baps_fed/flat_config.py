"""Dataclass configs from flat key/value tables (Flower's run and node configs, TOML)."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def values_from_flat(cls: type[T], config: dict[str, Any], skip: tuple[str, ...] = ()) -> dict:
    """The fields of dataclass ``cls`` found in ``config`` under their name or its dashed form
    ("local-steps"), converted to the type of the field's default. Unknown keys are ignored."""
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
    return kind(value)
