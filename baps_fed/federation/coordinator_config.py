"""The coordinator's settings, read from Flower's run config (``[tool.flwr.app.config]``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from baps_fed.federation.aggregation import AGGREGATIONS
from baps_fed.federation.server_optimizer import ServerOptConfig
from baps_fed.flat_config import require_positive, values_from_flat

# how the ServerApp's one-line refusal starts (coordinator/app.py), in Flower's log stream:
# the launchers read it as the run's failure (Flower's `flwr run` exits 0 after a failed
# simulation)
REFUSAL = "baps-fed coordinator: "


@dataclass(frozen=True)
class CoordinatorConfig:
    rounds: int = 5
    min_sites: int = 2  # a round waits for this many connected sites and needs as many replies
    round_timeout: float = 900.0  # seconds a round waits for replies; late sites are dropped
    eval_every: int = 1  # federated evaluation every N rounds (and always after the last)
    server_opt: str = "fedavg"
    server_lr: float = 1.0
    # how updates are combined: mean (example-weighted), or robust to a few bad sites:
    # median or trimmed-mean (coordinate-wise, trim-fraction cut at each end), krum or
    # multi-krum (Flower's selection, assuming up to krum-malicious bad sites)
    aggregation: str = "mean"
    trim_fraction: float = 0.2
    krum_malicious: int = 1
    # Flower's DP wrappers (coordinator/central_dp.py): off | server-clipping | client-clipping
    central_dp: str = "off"
    central_dp_noise: float = 1.0
    central_dp_clip: float = 0.5  # an honest 8-step sign round moves ~1.4 (0.16 x sqrt(72))
    central_dp_delta: float = 1e-5
    out_dir: str = "runs/federated"
    resume: bool = False
    overwrite: bool = False  # start afresh in a folder that holds a run (its files replaced)

    @classmethod
    def from_run_config(cls, config: dict[str, Any]) -> CoordinatorConfig:
        cfg = cls(**values_from_flat(cls, config))
        require_positive(cfg, "rounds", "min_sites", "eval_every")
        if cfg.aggregation not in AGGREGATIONS:
            raise ValueError(
                f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {cfg.aggregation!r}"
            )
        if cfg.krum_malicious < 0:
            raise ValueError(f"krum-malicious must be >= 0, got {cfg.krum_malicious}")
        if cfg.central_dp not in ("off", "server-clipping", "client-clipping"):
            raise ValueError(
                "central-dp must be off, server-clipping or client-clipping, "
                f"got {cfg.central_dp!r}"
            )
        if cfg.central_dp_noise < 0 or cfg.central_dp_clip <= 0:
            raise ValueError("central-dp-noise must be >= 0 and central-dp-clip > 0")
        if not 0 <= cfg.trim_fraction < 0.5:
            raise ValueError(f"trim-fraction must be in [0, 0.5), got {cfg.trim_fraction}")
        return cfg

    def server_optimizer(self) -> ServerOptConfig:
        return ServerOptConfig(name=self.server_opt, lr=self.server_lr)  # type: ignore[arg-type]
