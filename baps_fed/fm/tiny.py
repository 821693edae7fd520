"""The embedded default FM: a small SAM-architecture model pretrained by this project.

Pretrained by ``simulations/pretrain_tiny_fm.py`` on the general-domain corpus
(``baps_fed.data.general``) and shipped in ``baps_fed/fm/weights/`` in half precision, together
with its architecture and a record of how it was made (command, seed, steps, held-out Dice).
"""

from __future__ import annotations

from dataclasses import asdict, fields
from importlib import resources
from pathlib import Path

import torch
from segment_anything.modeling import Sam

from baps_fed.fm.sam_builder import SamArchitecture, build_sam
from baps_fed.fm.sam_checkpoint import CheckpointError

WEIGHTS_FILE = "tiny_sam.pt"


def default_weights_path() -> Path:
    return Path(str(resources.files("baps_fed.fm") / "weights" / WEIGHTS_FILE))


def save_tiny_weights(path: Path, sam: Sam, arch: SamArchitecture, meta: dict) -> None:
    """Half-precision weights, architecture and provenance in one small file."""
    state = {k: v.detach().to("cpu", torch.float16) for k, v in sam.state_dict().items()}
    torch.save({"config": asdict(arch), "state_dict": state, "meta": meta}, path)


def load_tiny_sam(path: Path | None = None) -> tuple[Sam, dict]:
    """The shipped (or a given) tiny FM in float32, and its provenance record."""
    path = Path(path) if path is not None else default_weights_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"tiny FM weights not found at {path}; reinstall baps-fed, or pretrain them with "
            "`python simulations/pretrain_tiny_fm.py`"
        )
    what_to_do = (
        "use a file written by `python simulations/pretrain_tiny_fm.py` (tiny:PATH), or load "
        "a segment-anything checkpoint with sam:ARCH:PATH (or medsam:PATH)"
    )
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for a bad file
        raise CheckpointError(
            f"{path}: cannot be read as a tiny FM weights file ({err}); {what_to_do}"
        ) from err
    if (
        not isinstance(blob, dict)
        or not isinstance(blob.get("config"), dict)
        or not isinstance(blob.get("state_dict"), dict)
    ):
        found = sorted(map(str, blob))[:5] if isinstance(blob, dict) else type(blob).__name__
        raise CheckpointError(
            f"{path} is not in the tiny FM format (a dict with 'config' and 'state_dict'; "
            f"found {found}); {what_to_do}"
        )
    known = {f.name for f in fields(SamArchitecture)}
    cfg = {
        k: tuple(v) if isinstance(v, list) else v for k, v in blob["config"].items() if k in known
    }
    try:
        sam = build_sam(SamArchitecture(**cfg))
        sam.load_state_dict({k: v.float() for k, v in blob["state_dict"].items()})
    except (TypeError, ValueError, RuntimeError, KeyError, AttributeError) as err:
        raise CheckpointError(
            f"{path}: its config and weights do not make a tiny FM ({err}); {what_to_do}"
        ) from err
    meta = blob.get("meta", {})
    return sam.eval(), meta if isinstance(meta, dict) else {}
