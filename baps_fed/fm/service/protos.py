"""Build the gRPC/protobuf Python code from ``baps_fed_fm.proto`` at first use, and import it.

Generated code is never committed: it must match the protobuf/grpcio installed next to it, and a
stale copy would silently disagree with the .proto. ``grpc_tools.protoc`` writes it into a cache
directory named by a hash of the .proto text and the generator/runtime versions, so an edit or an
upgrade rebuilds it. The cache is ``_generated/`` inside this package when writable, else
``$BAPS_FED_CACHE_DIR`` / ``$XDG_CACHE_HOME/baps_fed`` / ``~/.cache/baps_fed`` (read-only
site-packages), else a fresh temporary directory.

Concurrent first imports are safe: each builder writes into its own temporary directory and
renames it into place atomically; a loser of the race discards its copy and uses the winner's.
The modules are loaded as a synthetic package (``baps_fed.fm.service._pb``), so nothing is added
to ``sys.path`` and no top-level module names are taken.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from types import ModuleType

PROTO_FILE = Path(__file__).with_name("baps_fed_fm.proto")
STEM = PROTO_FILE.stem
PACKAGE = "baps_fed.fm.service._pb"
_COMPLETE = "COMPLETE"  # written last, before the atomic rename: a directory with it is whole

_lock = threading.Lock()
_loaded: tuple[ModuleType, ModuleType] | None = None


class ProtoBuildError(RuntimeError):
    """The service code could not be generated; the message says what to install or fix."""


def _cache_key() -> str:
    import google.protobuf
    import grpc

    try:
        from grpc_tools import grpc_version

        tools = grpc_version.VERSION
    except ImportError as err:
        raise ProtoBuildError(
            "the FM service needs grpcio-tools to build its gRPC code: pip install 'grpcio-tools'"
        ) from err
    h = hashlib.sha256(PROTO_FILE.read_bytes())
    h.update(f"|{tools}|{google.protobuf.__version__}|{grpc.__version__}".encode())
    return h.hexdigest()[:16]


def _cache_roots() -> list[Path]:
    roots = [Path(__file__).with_name("_generated")]
    if os.environ.get("BAPS_FED_CACHE_DIR"):
        roots.append(Path(os.environ["BAPS_FED_CACHE_DIR"]) / "fm_service")
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    roots.append(Path(xdg) / "baps_fed" / "fm_service")
    return roots


def _generate(out: Path) -> None:
    """protoc into ``out``, then make the grpc module import its sibling relatively."""
    from grpc_tools import protoc

    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_FILE.parent}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        PROTO_FILE.name,
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise ProtoBuildError(f"grpc_tools.protoc failed (exit {rc}) on {PROTO_FILE}")
    grpc_file = out / f"{STEM}_pb2_grpc.py"
    text = grpc_file.read_text()
    fixed, n = re.subn(rf"^import {STEM}_pb2 as", f"from . import {STEM}_pb2 as", text, flags=re.M)
    if n != 1:
        raise ProtoBuildError(
            f"unexpected grpc_tools output in {grpc_file}: cannot find `import {STEM}_pb2`; "
            "report the grpcio-tools version"
        )
    grpc_file.write_text(fixed)
    (out / "__init__.py").write_text("")
    (out / _COMPLETE).write_text("")


def _build_in(root: Path, key: str) -> Path:
    """The complete generated directory under ``root`` (built now if missing); OSError if the
    root is not writable."""
    final = root / key
    if (final / _COMPLETE).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
    try:
        _generate(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / _COMPLETE).is_file():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def generated_dir() -> Path:
    """The directory holding the generated modules for the current .proto, built if needed."""
    key = _cache_key()
    errors = []
    for root in _cache_roots():
        try:
            return _build_in(root, key)
        except OSError as err:  # read-only or missing location: try the next one
            errors.append(f"{root}: {err}")
    try:
        return _build_in(Path(tempfile.mkdtemp(prefix="baps_fed_fm_proto-")), key)
    except OSError as err:
        errors.append(f"temporary directory: {err}")
    raise ProtoBuildError(
        "cannot write the generated FM service code anywhere; tried "
        + "; ".join(errors)
        + ". Set BAPS_FED_CACHE_DIR to a writable directory"
    )


def load() -> tuple[ModuleType, ModuleType]:
    """(messages module ``*_pb2``, services module ``*_pb2_grpc``), built and imported once."""
    global _loaded
    with _lock:
        if _loaded is None:
            directory = generated_dir()
            spec = importlib.util.spec_from_file_location(
                PACKAGE, directory / "__init__.py", submodule_search_locations=[str(directory)]
            )
            assert spec is not None and spec.loader is not None
            pkg = importlib.util.module_from_spec(spec)
            sys.modules[PACKAGE] = pkg
            spec.loader.exec_module(pkg)
            pb2 = importlib.import_module(f"{PACKAGE}.{STEM}_pb2")
            pb2_grpc = importlib.import_module(f"{PACKAGE}.{STEM}_pb2_grpc")
            _loaded = (pb2, pb2_grpc)
        return _loaded
