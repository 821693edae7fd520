"""The coordinator's checkpoint: after every round, everything a restart needs to continue
with the identical decoder (global weights, server-optimiser state, the round, the history).

Written to a temporary file and renamed, so a crash mid-write never loses the last good one.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from baps_fed.evaluation.run_files import check_folder

CHECKPOINT = "coordinator_checkpoint.npz"


@dataclass
class CoordinatorState:
    round: int  # the last completed round
    theta: np.ndarray
    optimizer: dict[str, np.ndarray]
    history: list[dict]
    config: dict
    # seed-and-scalar runs: per site, its replica's arrays (baps_fed.codec.SiteReplica)
    replicas: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    audit_head: str = ""  # the hash of the audit log's last line (coordinator/audit.py)
    # scalar-* aggregations: the consensus trajectory's replica arrays
    consensus: dict[str, np.ndarray] = field(default_factory=dict)


def save_checkpoint(out: Path, state: CoordinatorState) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / CHECKPOINT
    arrays = {"theta": np.asarray(state.theta, np.float32)}
    arrays.update({f"opt_{k}": v for k, v in state.optimizer.items()})
    names = sorted(state.replicas)  # site names can hold any character: arrays go by index
    for i, name in enumerate(names):
        arrays.update({f"rep{i}_{k}": v for k, v in state.replicas[name].items()})
    arrays.update({f"cons_{k}": v for k, v in state.consensus.items()})
    meta = {
        "round": state.round,
        "history": state.history,
        "config": state.config,
        "replicas": names,
        "audit_head": state.audit_head,
    }
    buf = io.BytesIO()
    np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
    return path


RUN_FILES = (CHECKPOINT, "audit.jsonl", "rounds.json")  # what shows a folder holds a run


def check_run_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """A new federated run never replaces one by accident (``run_files.check_run_folder``)."""
    check_folder(out, RUN_FILES, resume, overwrite)


def load_checkpoint(out: Path) -> CoordinatorState:
    """The checkpoint of the run folder ``out``, to resume from."""
    path = out / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no coordinator checkpoint to resume from; start without resume"
        )
    return read_checkpoint(path)


def read_checkpoint(path: Path) -> CoordinatorState:
    """A checkpoint file, whatever its name (``baps-fed evaluate`` scores its decoder); a cut
    or altered file, or a decoder with non-finite values, is refused in one line naming it."""
    try:
        with np.load(path) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            theta = z["theta"].copy()
            opt = {k[4:]: z[k].copy() for k in z.files if k.startswith("opt_")}
            replicas = {}
            for i, name in enumerate(meta.get("replicas", [])):
                prefix = f"rep{i}_"
                replicas[name] = {
                    k[len(prefix) :]: z[k].copy() for k in z.files if k.startswith(prefix)
                }
            consensus = {k[5:]: z[k].copy() for k in z.files if k.startswith("cons_")}
            rnd, history, config = meta["round"], meta["history"], meta["config"]
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(
            f"{path}: not a readable coordinator checkpoint ({type(err).__name__}: {err}); it "
            "was cut short or altered: restore it from a backup, or start a new run"
        ) from err
    if not np.isfinite(theta).all():
        raise ValueError(
            f"{path}: the checkpoint's decoder holds {int((~np.isfinite(theta)).sum())} "
            "non-finite values; it cannot be resumed or scored: restore it from a backup or "
            "start afresh"
        )
    return CoordinatorState(
        rnd,
        theta,
        opt,
        history,
        config,
        replicas,
        meta.get("audit_head", ""),
        consensus,
    )
