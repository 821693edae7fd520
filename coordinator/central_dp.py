"""Flower's central DP wrappers around the coordinator's strategy (``central-dp``).

``server-clipping`` (Flower's DifferentialPrivacyServerSideFixedClipping) and
``client-clipping`` (DifferentialPrivacyClientSideFixedClipping, with Flower's
``fixedclipping_mod`` at each site) clip every site's model update theta_site - theta_global to
L2 norm ``central-dp-clip`` and add Gaussian noise of std ``central-dp-noise x clip / n`` to the
mean of the n sites: differential privacy for a whole hospital's contribution, against anyone
who sees the released decoders (with server-side clipping the coordinator itself still sees
the raw updates). The wrappers expect sites to return models, so they need ``upload =
"model"``, and their noise calibration assumes an equally weighted mean applied as is: the
coordinator then weighs sites equally, with aggregation ``mean`` and ``fedavg`` at server lr 1.
With few hospitals the noise is large (n = 4: a quarter of sigma x C on every coordinate);
site-level DP on the SPSA scalars (``dp``, baps_fed/privacy.py) protects each patient instead.

Accounting: each round is one Gaussian release over all sampled sites (Flower samples every
connected site), so Opacus' RDP accountant at sample rate 1 gives the epsilon spent so far.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

from baps_fed.federation.contract import FedTrainConfig
from baps_fed.federation.coordinator_config import CoordinatorConfig
from baps_fed.method.dp import create_accountant  # Opacus', imported without its log setup

WRAPPERS = {
    "server-clipping": DifferentialPrivacyServerSideFixedClipping,
    "client-clipping": DifferentialPrivacyClientSideFixedClipping,
}


def check_central_dp(cfg: CoordinatorConfig, train: FedTrainConfig) -> None:
    """Refuse settings under which the wrappers' noise would not give their guarantee."""
    if cfg.central_dp == "off":
        return
    wrong = []
    if train.upload != "model":
        wrong.append('upload = "model" (the wrappers clip returned models)')
    if cfg.aggregation != "mean":
        wrong.append('aggregation = "mean" (robust rules have another sensitivity)')
    if cfg.server_opt != "fedavg" or cfg.server_lr != 1.0:
        wrong.append('server-opt = "fedavg" and server-lr = 1 (the noise is added after the step)')
    if train.dp:
        wrong.append("dp = false (site-level DP on scalars needs seed or dense updates)")
    if wrong:
        raise ValueError(f"central-dp = {cfg.central_dp!r} needs " + "; ".join(wrong))


class CentralDP:
    """Flower's wrapper around the strategy, and the releases it has noised so far."""

    def __init__(self, strategy: Strategy, cfg: CoordinatorConfig, history: list[dict]) -> None:
        self.cfg = cfg
        self.wrapper = WRAPPERS[cfg.central_dp](
            strategy, cfg.central_dp_noise, cfg.central_dp_clip, num_sampled_clients=cfg.min_sites
        )
        self.releases = sum("central-dp-epsilon" in e["aggregate"] for e in history)

    def after_train(
        self,
        strategy,
        arrays: ArrayRecord | None,
        metrics: MetricRecord | None,
        replies: list[Message],
    ) -> MetricRecord | None:
        """Adopt the wrapper's noised decoder (the one released) and add the epsilon spent."""
        if arrays is None:
            if any(m.has_error() for m in replies):
                strategy.agg.failures.append(
                    "central DP: a site's error voids the round (Flower's DP wrappers aggregate "
                    "all sampled sites or none); the global decoder is unchanged"
                )
            return metrics
        strategy.agg.theta = arrays["theta"].numpy().astype(np.float32)
        self.releases += 1
        epsilon = central_epsilon(self.cfg, self.releases)
        return MetricRecord({**dict(metrics or {}), "central-dp-epsilon": epsilon})


def central_epsilon(cfg: CoordinatorConfig, releases: int) -> float:
    """Epsilon at ``central-dp-delta`` after ``releases`` noised rounds (RDP, sample rate 1)."""
    if releases == 0:
        return 0.0
    if cfg.central_dp_noise == 0:  # clipping alone: no guarantee
        return math.inf
    accountant = create_accountant(mechanism="rdp")
    accountant.history = [(cfg.central_dp_noise, 1.0, releases)]
    return float(accountant.get_epsilon(delta=cfg.central_dp_delta))
