"""Load a segment-anything checkpoint from a local file, with errors that say what to do.

Accepted formats: segment-anything's own (a plain state dict, e.g. ``sam_vit_b_01ec64.pth``),
MedSAM's (the same keys; training snapshots wrap them in ``{"model": ...}``), and state dicts
saved from ``DataParallel`` (``module.`` prefixes). Nothing is ever downloaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from segment_anything.modeling import Sam

from baps_fed.fm.sam_builder import SAM_ARCHITECTURES, SamArchitecture, build_sam


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit the named architecture."""


def _unwrap(blob: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(blob, Mapping):
        for key in ("model", "state_dict", "model_state_dict"):
            if key in blob and isinstance(blob[key], Mapping):
                blob = blob[key]
                break
    if not isinstance(blob, Mapping) or not blob:
        raise CheckpointError(f"{path}: not a state dict (found {type(blob).__name__})")
    return {k.removeprefix("module."): v for k, v in blob.items() if isinstance(v, torch.Tensor)}


def _guess_architecture(state: Mapping[str, torch.Tensor]) -> str:
    """Name the published architecture a state dict looks like, for error messages."""
    w = state.get("image_encoder.patch_embed.proj.weight")
    if w is None:
        return "not a segment-anything model (no image_encoder.patch_embed)"
    depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    for name, arch in SAM_ARCHITECTURES.items():
        if arch.embed_dim == w.shape[0] and arch.depth == depth and arch.patch_size == w.shape[2]:
            return name
    return f"an encoder of width {w.shape[0]}, depth {depth}, patch {w.shape[2]}"


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a local checkpoint file, unwrapped from the usual training wrappers."""
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint not found: {path}. Download it on a machine with access (e.g. "
            "sam_vit_b_01ec64.pth from the segment-anything release) and give its local path"
        )
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for a bad file
        raise CheckpointError(f"{path}: cannot be read as a PyTorch checkpoint ({err})") from err
    return _unwrap(blob, path)


def load_sam_checkpoint(path: str | Path, arch: str | SamArchitecture) -> Sam:
    """Build ``arch`` (a name in SAM_ARCHITECTURES or a SamArchitecture) with the file's weights."""
    path = Path(path).expanduser()
    name = arch if isinstance(arch, str) else "the given architecture"
    if isinstance(arch, str):
        if arch not in SAM_ARCHITECTURES:
            raise CheckpointError(
                f"unknown SAM architecture {arch!r}; use one of {', '.join(SAM_ARCHITECTURES)}"
            )
        arch = SAM_ARCHITECTURES[arch]
    state = read_state_dict(path)
    sam = build_sam(arch)
    expected = sam.state_dict()
    missing = [k for k in expected if k not in state]
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs {name} {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or wrong:
        details = "; ".join(wrong[:3] + [f"missing {k}" for k in missing[:3]])
        raise CheckpointError(
            f"{path} does not match {name}: it looks like {_guess_architecture(state)}. "
            f"{len(wrong)} shape mismatches, {len(missing)} missing weights ({details}). "
            "Name the architecture the checkpoint was trained as (sam:vit_b|vit_l|vit_h:PATH)"
        )
    sam.load_state_dict({k: state[k].float() for k in expected})
    return sam.eval()
