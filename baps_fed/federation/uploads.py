"""The one upload registry: what a site's train reply carries, for each ``upload`` setting.

- ``dense``: the update ``theta_site - theta_global`` (float32, one per decoder parameter);
- ``seeds``: the round's K scalars per step as bytes (``seed_upload``), which the coordinator
  replays into the update (``replica``);
- ``model``: the site's decoder after the round (global + update), Flower's usual reply, which
  its central DP wrappers clip.

The site encodes with ``encode_upload``, the outbox allow-list checks the exact ``UploadShape``,
the coordinator's ``RoundAggregator`` decodes; all three read this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np

from baps_fed.federation.seed_upload import pack_scalars, scalar_bytes

if TYPE_CHECKING:  # the contract reads UPLOAD_KINDS from here
    from baps_fed.federation.contract import FedTrainConfig, RoundResult

UploadKind = Literal["dense", "seeds", "model"]
UPLOAD_KINDS: tuple[str, ...] = get_args(UploadKind)
ARRAY_NAME: dict[str, str] = {"dense": "update", "seeds": "scalars", "model": "theta"}


@dataclass(frozen=True)
class UploadShape:
    """The one array a train reply may carry: its record key, exact length and dtype; and
    whether the run is DP (its metrics then limited to ``contract.DP_TRAIN_METRICS``)."""

    name: str
    size: int
    dtype: str
    dp: bool = False


def upload_shape(cfg: FedTrainConfig, n_params: int) -> UploadShape:
    """This run's upload: anything of another name, length or dtype could carry an image."""
    if cfg.upload == "seeds":
        size, dtype = scalar_bytes(cfg.local_steps, cfg.sp_avg), "uint8"
        return UploadShape("scalars", size, dtype, cfg.dp)
    return UploadShape(ARRAY_NAME[cfg.upload], n_params, "float32", cfg.dp)


def encode_upload(
    kind: str, theta_global: np.ndarray, result: RoundResult
) -> dict[str, np.ndarray]:
    """A site's round as the arrays of its reply."""
    if kind == "seeds":  # a few bytes: the coordinator replays the round
        return {"scalars": np.frombuffer(pack_scalars(result.c, result.scalars), np.uint8)}
    if kind == "model":
        return {"theta": (np.asarray(theta_global) + result.update).astype(np.float32)}
    if kind == "dense":
        return {"update": result.update}
    raise ValueError(f"upload must be one of {', '.join(UPLOAD_KINDS)}, got {kind!r}")


@dataclass
class SiteUpload:
    """What one site's train reply brought: its arrays (as ``encode_upload`` made them) and its
    metrics (num-examples weighs it; spsa-step keeps its replica in step)."""

    site: str
    arrays: dict[str, np.ndarray]
    metrics: dict[str, float]
