"""Seed-and-scalar uploads: a site's round sent as its K loss-difference scalars per step.

Everything else an SPSA round needs is public: the perturbations come from (master seed, round,
site id, step, k), and the step rule is the run's. So a site can upload ``steps x K`` float32
scalars plus its perturbation scale c instead of its update, and the coordinator rebuilds the
update by replaying them (``replica.SiteReplica``).

Wire format (little-endian): magic ``b"BPSS"``, version u16, steps u16, K u16, pad u16,
c float64, then steps*K float32 scalars.
"""

from __future__ import annotations

import struct

import numpy as np

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
