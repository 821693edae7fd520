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

WEIGHTS_FILE = "tiny_sam.pt"


def default_weights_path() -> Path:
    return Path(str(resources.files("baps_fed.fm") / "weights" / WEIGHTS_FILE))


def save_tiny_weights(path: Path, sam: Sam, arch: SamArchitecture, meta: dict) -> None:
    """Half-precision weights, architecture and provenance in one small file."""
    state = {k: v.detach().to(torch.float16) for k, v in sam.state_dict().items()}
    torch.save({"config": asdict(arch), "state_dict": state, "meta": meta}, path)


def load_tiny_sam(path: Path | None = None) -> tuple[Sam, dict]:
    """The shipped (or a given) tiny FM in float32, and its provenance record."""
    path = Path(path) if path is not None else default_weights_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"tiny FM weights not found at {path}; reinstall baps-fed, or pretrain them with "
            "`python simulations/pretrain_tiny_fm.py`"
        )
    blob = torch.load(path, map_location="cpu", weights_only=True)
    known = {f.name for f in fields(SamArchitecture)}
    cfg = {
        k: tuple(v) if isinstance(v, list) else v for k, v in blob["config"].items() if k in known
    }
    sam = build_sam(SamArchitecture(**cfg))
    sam.load_state_dict({k: v.float() for k, v in blob["state_dict"].items()})
    return sam.eval(), blob.get("meta", {})
