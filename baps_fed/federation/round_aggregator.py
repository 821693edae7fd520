"""One round at the coordinator, without Flower: the sites' uploads in, the next global decoder
out.

For each upload: decode it (dense update, the site's model, or seed-and-scalar bytes replayed on
the site's replica), check it against the guard (``aggregation.reject_reason``), then combine
the accepted ones with the run's aggregation rule and apply the server optimiser. The Flower
strategy (``coordinator/strategy.py``), ``baps-fed audit`` and the in-process federation of the
benchmarks all call ``apply_round``, so a replay runs the very same code as the run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from baps_fed.federation.aggregation import (
    SCALAR_AGGREGATIONS,
    Aggregation,
    aggregate_updates,
    combine_scalars,
    reject_reason,
    update_bound,
)
from baps_fed.federation.contract import FedTrainConfig
from baps_fed.federation.replica import SiteReplica
from baps_fed.federation.seed_upload import CodecError, unpack_scalars
from baps_fed.federation.server_optimizer import ServerOptimizer
from baps_fed.federation.uploads import SiteUpload
from baps_fed.method.private_head import private_head_size


class RoundAggregator:
    """The global decoder and everything that advances it: server optimiser, site replicas
    (seed uploads), the consensus trajectory (scalar-* rules). ``failures`` and ``site_train``
    describe the last round, for the report."""

    def __init__(
        self,
        optimizer: ServerOptimizer,
        theta: np.ndarray,
        train_cfg: FedTrainConfig | None = None,
        replicas: dict[str, SiteReplica] | None = None,
        aggregation: Aggregation = "mean",
        trim: float = 0.2,
        malicious: int = 1,
        consensus: SiteReplica | None = None,
        equal_weights: bool = False,
        min_updates: int = 1,
    ) -> None:
        self.optimizer = optimizer
        # the run's min-sites: fewer accepted updates are not aggregated, so that the global
        # decoder never moves by one site's update alone (which every other site would see)
        self.min_updates = min_updates
        self.theta = np.asarray(theta, np.float32)
        self.train_cfg = cfg = train_cfg or FedTrainConfig()
        self.aggregation, self.trim, self.malicious = aggregation, trim, malicious
        self.equal_weights = equal_weights  # central DP (see apply_round)
        if aggregation in SCALAR_AGGREGATIONS and not (
            cfg.upload == "seeds" and cfg.shared_perturbations
        ):
            raise ValueError(
                f"aggregation {aggregation!r} combines the sites' scalars one by one, so every "
                'site must send them along the same directions: set upload = "seeds" and '
                "shared-perturbations = true in the run config"
            )
        self.bound = update_bound(cfg.local_steps, cfg.lr, cfg.update, self.theta.size)
        # seed-and-scalar uploads: one replica of each site's trajectory, advanced by replay
        self.replicas: dict[str, SiteReplica] = replicas if replicas is not None else {}
        # scalar-* aggregations: the trajectory the combined scalars drive from the global
        self.consensus = consensus or SiteReplica("consensus", self._private_size())
        self.site_train: dict[str, dict[str, float]] = {}
        self.failures: list[str] = []

    def start_round(self) -> None:
        self.site_train, self.failures = {}, []

    def _private_size(self) -> int:
        cfg = self.train_cfg
        return private_head_size(cfg.private_head, cfg.decoder_config().image_size)

    def update_of(self, up: SiteUpload, server_round: int) -> np.ndarray | None:
        """The site's update: sent as is, or rebuilt from its seed-and-scalar upload."""
        name = up.site
        if "update" in up.arrays:
            return up.arrays["update"]
        if "theta" in up.arrays:  # upload = "model": the site's decoder after the round
            return (up.arrays["theta"] - self.theta).astype(np.float32)
        if "scalars" not in up.arrays:
            self.failures.append(f"train {name}: no update in its reply")
            return None
        if name not in self.replicas:
            self.replicas[name] = SiteReplica(name, self._private_size())
        start_step = int(up.metrics.get("spsa-step", -1))
        if start_step == 0 and self.replicas[name].state.step != 0:
            # the site starts afresh (a new run context, e.g. after a coordinator restart)
            self.replicas[name] = SiteReplica(name, self.replicas[name].n_private)
        replica = self.replicas[name]
        if start_step != replica.state.step:
            self.failures.append(
                f"train {name}: its optimiser is at step {start_step}, the coordinator's "
                f"replica at {replica.state.step} (a reply was lost); its scalars cannot be "
                'replayed: restart the run, or use upload = "dense"'
            )
            return None
        blob = up.arrays["scalars"].tobytes()
        try:
            update = replica.replay_round(self.theta, server_round, blob, self.train_cfg)
        except CodecError as err:
            self.failures.append(f"train {name}: {err}")
            return None
        # replayed all the same, so the replica stays in step with the site
        if not np.isfinite(unpack_scalars(blob)[1]).any():
            self.failures.append(
                f"train {name}: update rejected, its upload holds no finite scalar (every step "
                "skipped): a broken FM at the site or a malicious upload"
            )
            return None
        return update

    def apply_round(
        self, server_round: int, uploads: list[SiteUpload], failed: Sequence[str] = ()
    ) -> bool:
        """Updates from the round's uploads (replayed where they are scalars), the guard, the
        aggregation and the server step; False when fewer than ``min_updates`` were usable
        (``failed``: the sites that replied with an error or not at all, for the report)."""
        updates, weights, scalars = [], [], []
        for up in uploads:
            update = self.update_of(up, server_round)
            if update is None:
                continue
            if update.shape != self.theta.shape:
                self.failures.append(f"train {up.site}: update shape {update.shape}")
                continue
            reason = reject_reason(update, self.bound)
            if reason is not None:  # never aggregated: a broken or malicious site
                self.failures.append(f"train {up.site}: update rejected, {reason}")
                continue
            metrics = dict(up.metrics)
            metrics["upload-bytes"] = sum(a.nbytes for a in up.arrays.values())
            self.site_train[up.site] = metrics
            updates.append(update)
            weights.append(metrics.get("num-examples"))
            if self.aggregation in SCALAR_AGGREGATIONS:
                scalars.append(unpack_scalars(up.arrays["scalars"].tobytes()))
        if len(updates) < self.min_updates:
            if updates:
                self._too_few(uploads, failed)
            return False
        if self.equal_weights or all(w is None for w in weights):
            # central DP's noise assumes an unweighted mean; DP sites do not say how many
            # cases they train on (contract.DP_TRAIN_METRICS): then every site counts once
            weights = [1.0] * len(updates)
        else:  # every site says (Flower's reply check refuses a round that mixes)
            weights = [float(w) for w in weights]
        if self.aggregation in SCALAR_AGGREGATIONS:
            combined = self._consensus_update(server_round, scalars)
        else:
            combined = aggregate_updates(
                updates, weights, self.aggregation, self.trim, self.malicious
            )
        self.theta = self.optimizer.step(self.theta, combined)
        return True

    def _too_few(self, uploads: list[SiteUpload], failed: Sequence[str]) -> None:
        usable = sorted(self.site_train)
        lost = sorted((set(failed) | {u.site for u in uploads}) - set(usable))
        self.failures.append(
            f"min-sites not met: {len(usable)} usable update{'s' * (len(usable) != 1)} "
            f"({', '.join(usable)}) of the {self.min_updates} needed (failed or rejected: "
            f"{', '.join(lost) or 'none'}); the round was not aggregated, the global decoder "
            "is unchanged"
        )

    def _consensus_update(
        self, server_round: int, uploads: list[tuple[float, np.ndarray]]
    ) -> np.ndarray:
        """The scalar-* rules: combine the accepted sites' scalars one by one (each one a
        loss difference along the same shared direction), then replay the combined scalars
        from the global decoder on the coordinator's own consensus trajectory."""
        c = float(np.median([c for c, _ in uploads]))  # every site calibrates the same c
        robust = combine_scalars([s for _, s in uploads], self.aggregation, self.trim)
        return self.consensus.replay_scalars(self.theta, server_round, c, robust, self.train_cfg)
