"""Seed-and-scalar updates: a site's round sent as its K loss-difference scalars per step.

Everything else an SPSA round needs is public: the perturbations come from (master seed, round,
site id, step, k), and the step rule is the run's. So a site can upload ``steps x K`` float32
scalars plus its perturbation scale c instead of its update, and the coordinator rebuilds the
update by replaying the same SPSA-GC/GEASS arithmetic (``zoo.replay``) on a replica of the
site's trajectory: its full parameter vector (shared decoder and private head), optimiser state
and own decoder. The replay is bit-identical to the site's own update on one platform (tested).

Note what this implies: whoever holds a site's scalars can also rebuild its private head and
own decoder (both are functions of the same public seeds and scalars). They stay site-specific,
not secret; under DP they are post-processing of DP releases like the update itself.

Wire format (little-endian): magic ``b"BPSS"``, version u16, steps u16, K u16, pad u16,
c float64, then steps*K float32 scalars.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from baps_fed.site_training import FedTrainConfig, perturbation_key, site_id, start_point
from baps_fed.zoo import GeassConfig, SpsaState, replay

MAGIC = b"BPSS"
VERSION = 1
_HEADER = struct.Struct("<4sHHHHd")


class CodecError(ValueError):
    """A seed-and-scalar upload that cannot be decoded or replayed."""


def scalar_bytes(steps: int, k: int) -> int:
    """The size of a round's upload: header plus steps x K float32 (dense: 4 x parameters)."""
    return _HEADER.size + 4 * steps * k


def pack_scalars(c: float, scalars: np.ndarray) -> bytes:
    """A round's scalars [steps, K] and c as bytes."""
    s = np.asarray(scalars, dtype="<f4")
    if s.ndim != 2:
        raise CodecError(f"scalars must be [steps, K], got shape {s.shape}")
    return _HEADER.pack(MAGIC, VERSION, s.shape[0], s.shape[1], 0, float(c)) + s.tobytes()


def unpack_scalars(blob: bytes) -> tuple[float, np.ndarray]:
    """(c, scalars [steps, K] float32) from bytes written by ``pack_scalars``."""
    if len(blob) < _HEADER.size:
        raise CodecError(
            f"upload of {len(blob)} bytes is shorter than the {_HEADER.size}-byte header"
        )
    magic, version, steps, k, _, c = _HEADER.unpack_from(blob)
    if magic != MAGIC or version != VERSION:
        raise CodecError(f"not a version-{VERSION} seed-and-scalar upload (magic {magic!r})")
    expected = scalar_bytes(steps, k)
    if len(blob) != expected:
        raise CodecError(f"upload has {len(blob)} bytes, its header says {expected}")
    scalars = np.frombuffer(blob, dtype="<f4", offset=_HEADER.size).reshape(steps, k)
    return c, scalars.astype(np.float32)


@dataclass
class SiteReplica:
    """The coordinator's copy of one site's trajectory, advanced only by replaying uploads."""

    name: str
    n_private: int  # parameters of the site's private head (0: none)
    private: np.ndarray | None = None
    personal: np.ndarray | None = None
    state: SpsaState = field(default_factory=SpsaState)

    def replay_round(
        self, theta_global: np.ndarray, server_round: int, blob: bytes, cfg: FedTrainConfig
    ) -> np.ndarray:
        """The site's update of the shared decoder in this round, rebuilt from its upload."""
        c, scalars = unpack_scalars(blob)
        if scalars.shape != (cfg.local_steps, cfg.sp_avg):
            raise CodecError(
                f"site {self.name!r}: upload holds {scalars.shape[0]} steps x {scalars.shape[1]} "
                f"scalars, the run expects {cfg.local_steps} x {cfg.sp_avg}"
            )
        theta = start_point(theta_global, self.personal, cfg.personal_keep)
        return self.replay_scalars(theta, server_round, c, scalars, cfg)

    def replay_scalars(
        self,
        theta: np.ndarray,
        server_round: int,
        c: float,
        scalars: np.ndarray,
        cfg: FedTrainConfig,
    ) -> np.ndarray:
        """Replays [steps, K] scalars from ``theta`` (and this replica's private head and
        optimiser state); returns the move of the shared decoder."""
        private = self.private if self.private is not None else np.zeros(self.n_private)
        full = np.concatenate([theta, private]).astype(np.float32)
        spsa = cfg.spsa_config(c)
        key = perturbation_key(cfg, server_round, site_id(self.name), self.state.step)
        full, self.state = replay(full, list(scalars), self.state, spsa, GeassConfig(), key)
        shared = full[: theta.size]
        self.private, self.personal = full[theta.size :], shared
        return (shared - theta).astype(np.float32)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Everything a restarted coordinator needs to go on replaying (numpy arrays only)."""
        state = self.state.to_dict()
        arrays = {k: np.asarray(v) for k, v in state.items()}
        arrays["n_private"] = np.asarray(self.n_private)
        if self.private is not None:
            arrays["private"] = np.asarray(self.private, np.float32)
        if self.personal is not None:
            arrays["personal"] = np.asarray(self.personal, np.float32)
        return arrays

    @classmethod
    def from_arrays(cls, name: str, arrays: dict[str, np.ndarray]) -> SiteReplica:
        state = {k: v for k, v in arrays.items() if k not in ("n_private", "private", "personal")}
        return cls(
            name,
            int(arrays["n_private"]),
            arrays.get("private"),
            arrays.get("personal"),
            SpsaState.from_dict(state),
        )
