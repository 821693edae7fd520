"""The package layout's rules: the method and the federation's logic in ``baps_fed/`` never
import Flower (only coordinator/ and sites/, the Flower apps, do), and no module grows past a
size one can review."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 400


def _modules(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def _shown(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def _flwr_imports(path: Path) -> list[str]:
    """Every ``import flwr...`` / ``from flwr... import`` in the file, anywhere in it (functions
    and ``if TYPE_CHECKING:`` blocks included), as ``file:line: statement``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        if any(name == "flwr" or name.startswith("flwr.") for name in names):
            found.append(f"{_shown(path)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_modules_are_found():
    modules = {_shown(p) for p in _modules("baps_fed", "coordinator", "sites")}
    assert "baps_fed/federation/aggregation.py" in modules
    assert "sites/outbox.py" in modules and "coordinator/app.py" in modules
    assert len(modules) > 20


@pytest.mark.parametrize(
    "source, line",
    [
        ("import flwr", 1),
        ("import numpy, flwr.app as app", 1),
        ("from flwr.app import Message", 1),
        ("from flwr import serverapp", 1),
        ("def f():\n    import flwr.common", 2),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from flwr.app import X", 3),
    ],
)
def test_the_check_finds_every_form_of_flwr_import(tmp_path, source, line):
    path = tmp_path / "module.py"
    path.write_text(source + "\n")
    (hit,) = _flwr_imports(path)
    assert hit.startswith(f"{path}:{line}: ")


@pytest.mark.parametrize(
    "source", ["import flwrx", "from flwr_datasets import x", "from .flwr import x", "x = 'flwr'"]
)
def test_the_check_ignores_what_is_not_flower(tmp_path, source):
    path = tmp_path / "module.py"
    path.write_text(source + "\n")
    assert _flwr_imports(path) == []


def test_the_flower_apps_do_import_flwr():  # the check sees real imports in this repository
    assert _flwr_imports(ROOT / "sites" / "outbox.py")


def test_nothing_in_baps_fed_imports_flwr():
    offenders = [hit for path in _modules("baps_fed") for hit in _flwr_imports(path)]
    assert not offenders, "baps_fed/ must not import Flower:\n" + "\n".join(offenders)


def test_no_module_is_over_400_lines():
    sizes = {
        _shown(p): len(p.read_text().splitlines())
        for p in _modules("baps_fed", "coordinator", "sites")
    }
    offenders = [f"{name}: {n} lines" for name, n in sorted(sizes.items()) if n > MAX_LINES]
    assert not offenders, f"modules over {MAX_LINES} lines:\n" + "\n".join(offenders)


# docs/architecture.md, "What may import what": each package of baps_fed and what it may use
ALLOWED = {
    "fm": set(),
    "data": set(),
    "evaluation": {"fm", "data"},
    "method": {"fm", "data", "evaluation"},
    "single_site": {"fm", "data", "evaluation", "method", "flat_config"},
    "federation": {"fm", "data", "evaluation", "method", "flat_config"},
    "launch": {"federation", "fm"},
    "privacy_audit": {"fm", "data", "evaluation", "method", "federation", "flat_config"},
}


def _project_imports(path: Path) -> set[str]:
    """The baps_fed packages (or top-level modules) this file imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            parts = node.module.split(".")
            if parts[0] == "baps_fed" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_lower_layers_never_import_higher_ones():
    wrong = []
    for package, allowed in ALLOWED.items():
        for path in _modules(f"baps_fed/{package}"):
            for used in sorted(_project_imports(path) - allowed - {package}):
                wrong.append(f"{_shown(path)} imports baps_fed.{used}")
    assert not wrong, "layering broken (docs/architecture.md):\n" + "\n".join(wrong)
