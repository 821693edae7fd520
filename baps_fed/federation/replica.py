"""The coordinator's replica of one site's trajectory, advanced only by replaying its uploads.

A seed-and-scalar upload (``seed_upload``) holds a round's K scalars per step; with the public
seeds and the run's step rule, ``replay_round`` rebuilds the site's update bit for bit. Whoever
holds a site's scalars can also rebuild its private head and own decoder: they stay
site-specific, not secret (under DP they are post-processing of DP releases).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from baps_fed.federation.contract import FedTrainConfig, perturbation_key, site_id, start_point
from baps_fed.federation.seed_upload import (
    CodecError,
    unpack_scalars,
)
from baps_fed.method.spsa import GeassConfig, SpsaState, replay


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
