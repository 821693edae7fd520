"""The run's audit log, and ``baps-fed audit``: rebuild the global decoder from it and check.

After every round the coordinator appends one JSON line to ``audit.jsonl``: what each site's
train reply brought (its update or seed-and-scalar bytes, its example count and optimiser step,
its epsilon under DP), the SHA-256 of the global decoder the round produced, and the hash of
the line before (a chain whose head the checkpoint keeps, so a change that leaves the decoder
as it was is caught too). The audit starts
from the run's initial decoder and feeds the logged uploads, round by round, through the same
code the coordinator ran (``RoundAggregator.apply_round``: replay, guard, aggregation,
server step); every round's decoder must hash as logged and the last must equal the checkpoint's.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from baps_fed.federation.checkpoint import load_checkpoint
from baps_fed.federation.contract import FedTrainConfig, initial_theta
from baps_fed.federation.coordinator_config import CoordinatorConfig
from baps_fed.federation.round_aggregator import RoundAggregator
from baps_fed.federation.server_optimizer import ServerOptimizer
from baps_fed.federation.uploads import SiteUpload

AUDIT_LOG = "audit.jsonl"


def theta_hash(theta: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(theta, np.float32).tobytes()).hexdigest()


def _encode(a: np.ndarray) -> dict:
    return {"dtype": str(a.dtype), "shape": list(a.shape), "b64": base64.b64encode(a).decode()}


def _decode(d: dict) -> np.ndarray:
    raw = base64.b64decode(d["b64"])
    return np.frombuffer(raw, dtype=d["dtype"]).reshape(d["shape"]).copy()


def _line_hash(line: str) -> str:
    return hashlib.sha256(line.encode()).hexdigest()


def append_round(
    out: Path, server_round: int, uploads: list[SiteUpload], theta, prev_hash: str
) -> str:
    """Append the round after the line hashed ``prev_hash`` (the checkpoint's head; "" for the
    first); returns the new line's hash, the next head."""
    line = {
        "prev_sha256": prev_hash,
        "round": server_round,
        "uploads": [
            {
                "site": u.site,
                "metrics": u.metrics,
                "arrays": {k: _encode(a) for k, a in u.arrays.items()},
            }
            for u in uploads
        ],
        "theta_sha256": theta_hash(theta),
    }
    text = json.dumps(line)
    with open(out / AUDIT_LOG, "a") as f:
        f.write(text + "\n")
    return _line_hash(text)


def truncate_log(out: Path, last_round: int) -> str:
    """Keep the log's rounds up to ``last_round``: a restart continues after the checkpoint,
    a fresh run (``last_round`` 0) starts an empty log. A last line cut short by a crash
    mid-write is dropped and said (the return value); a damaged line before it is an error."""
    path = out / AUDIT_LOG
    if not path.is_file():
        return ""
    lines, note = path.read_text().splitlines(), ""
    keep = []
    for i, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            if i < len(lines):
                raise ValueError(
                    f"{path}: line {i} of {len(lines)} is damaged; the log cannot be continued "
                    "(restore it, or start a new run with --overwrite)"
                ) from None
            note = "the audit log's last line was cut short (a crash mid-write); dropped it"
            continue
        if entry["round"] <= last_round:
            keep.append(line)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(ln + "\n" for ln in keep))
    os.replace(tmp, path)
    return note


@dataclass
class AuditResult:
    ok: bool
    rounds: int
    message: str


def audit_run(run_dir: Path) -> AuditResult:
    """Rebuild the run's decoder from its audit log and compare, round by round."""
    run_dir = Path(run_dir)
    log, rounds_json = run_dir / AUDIT_LOG, run_dir / "rounds.json"
    for path in (log, rounds_json):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; is {run_dir} a coordinator's run folder?")
    config = json.loads(rounds_json.read_text())["config"]
    train_cfg = FedTrainConfig(**config["train"])
    coord = CoordinatorConfig(**config["coordinator"])
    if coord.central_dp != "off":
        return AuditResult(
            False,
            0,
            f"central-dp = {coord.central_dp}: the coordinator added secret Gaussian noise to "
            "every released decoder, which no log may hold; such a run cannot be replayed",
        )
    rounds = RoundAggregator(
        ServerOptimizer(coord.server_optimizer()),
        initial_theta(train_cfg),
        train_cfg,
        {},
        coord.aggregation,  # type: ignore[arg-type]
        coord.trim_fraction,
        coord.krum_malicious,
        min_updates=coord.min_sites,
    )
    n, prev = 0, ""
    for n, line in enumerate(log.read_text().splitlines(), start=1):
        entry = json.loads(line)
        if entry["prev_sha256"] != prev:
            return AuditResult(
                False, n, f"round {entry['round']}: the log's hash chain is broken before it"
            )
        prev = _line_hash(line)
        uploads = [
            SiteUpload(u["site"], {k: _decode(a) for k, a in u["arrays"].items()}, u["metrics"])
            for u in entry["uploads"]
        ]
        rounds.start_round()
        rounds.apply_round(entry["round"], uploads)
        if theta_hash(rounds.theta) != entry["theta_sha256"]:
            return AuditResult(
                False,
                n,
                f"round {entry['round']}: the logged uploads give another decoder than the "
                "one the coordinator recorded; the log or the run was altered",
            )
    saved = load_checkpoint(run_dir)
    if prev != saved.audit_head:
        return AuditResult(
            False, n, "the log differs from the one the checkpoint recorded (its last hash)"
        )
    if n != saved.round or not np.array_equal(rounds.theta, saved.theta):
        return AuditResult(
            False, n, f"the log's {n} rounds do not rebuild the checkpoint's decoder (round "
            f"{saved.round})"
        )  # fmt: skip
    return AuditResult(True, n, f"{n} rounds replayed; the decoder equals the checkpoint's")
