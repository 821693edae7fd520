"""The server optimiser: how the combined update moves the global decoder (pure numpy).

``fedavg`` (theta += lr * update, lr 1 is plain FedAvg), ``fedavgm`` (server momentum, Hsu et
al. 2019) or ``fedadam`` (Reddi et al. 2021). Its state is plain arrays, so a checkpoint holds
it and a resumed coordinator continues exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

ServerOpt = Literal["fedavg", "fedavgm", "fedadam"]


@dataclass(frozen=True)
class ServerOptConfig:
    name: ServerOpt = "fedavg"
    lr: float = 1.0
    momentum: float = 0.9  # fedavgm
    beta1: float = 0.9  # fedadam
    beta2: float = 0.99
    tau: float = 1e-3  # fedadam: adaptivity floor

    def __post_init__(self) -> None:
        if self.name not in ("fedavg", "fedavgm", "fedadam"):
            raise ValueError(f"server optimiser must be fedavg|fedavgm|fedadam, got {self.name!r}")
        if not self.lr > 0:
            raise ValueError(f"server learning rate must be > 0, got {self.lr}")


class ServerOptimizer:
    """Applies the aggregated update to the global decoder; ``state`` round-trips a checkpoint."""

    def __init__(self, cfg: ServerOptConfig, state: dict[str, np.ndarray] | None = None) -> None:
        self.cfg = cfg
        self.state: dict[str, np.ndarray] = dict(state or {})

    def step(self, theta: np.ndarray, mean_update: np.ndarray) -> np.ndarray:
        cfg, d = self.cfg, np.asarray(mean_update, np.float64)
        if cfg.name == "fedavg":
            step = d
        elif cfg.name == "fedavgm":
            m = cfg.momentum * self.state.get("m", np.zeros_like(d)) + d
            self.state["m"] = m
            step = m
        else:
            m = cfg.beta1 * self.state.get("m", np.zeros_like(d)) + (1 - cfg.beta1) * d
            v = cfg.beta2 * self.state.get("v", np.zeros_like(d)) + (1 - cfg.beta2) * d * d
            self.state["m"], self.state["v"] = m, v
            step = m / (np.sqrt(v) + cfg.tau)
        return (np.asarray(theta, np.float64) + cfg.lr * step).astype(np.float32)
