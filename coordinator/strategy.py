"""FedAvg over decoder *updates*, weighted by examples, with a server optimiser on top.

Flower's FedAvg samples nodes, builds the messages and checks replies; this subclass replaces
the aggregation: sites send ``update = theta_site - theta_global`` and the server optimiser
(``baps_fed.aggregate``) applies their example-weighted mean, so server momentum and FedAdam
keep a state the coordinator checkpoints. Per-site metrics are kept by site name for the report.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg

from baps_fed.aggregate import (
    SCALAR_AGGREGATIONS,
    Aggregation,
    ServerOptimizer,
    aggregate_updates,
    combine_scalars,
    reject_reason,
    update_bound,
)
from baps_fed.codec import CodecError, SiteReplica, unpack_scalars
from baps_fed.fed_report import weighted
from baps_fed.personal import private_head_size
from baps_fed.site_training import FedTrainConfig


def site_name(msg: Message) -> str:
    site = msg.content.get("site") if not msg.has_error() else None
    if site is not None and "name" in site:
        return str(site["name"])
    return f"node-{msg.metadata.src_node_id}"


@dataclass
class SiteUpload:
    """What one site's train reply brought: its arrays (the update or its scalar bytes) and
    its metrics (num-examples weighs it; spsa-step keeps its replica in step)."""

    site: str
    arrays: dict[str, np.ndarray]
    metrics: dict[str, float]


class UpdateAveraging(FedAvg):
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
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)  # replies and messages use FedAvg's "arrays" key
        self.optimizer = optimizer
        self.theta = np.asarray(theta, np.float32)
        self.train_cfg = train_cfg or FedTrainConfig()
        self.aggregation, self.trim, self.malicious = aggregation, trim, malicious
        self.equal_weights = equal_weights  # central DP: its noise assumes an unweighted mean
        cfg = self.train_cfg
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
        self.site_evaluate: dict[str, dict[str, float]] = {}
        self.failures: list[str] = []
        self.round_uploads: list[SiteUpload] = []  # the last round's, for the audit log

    def _update_of(self, up: SiteUpload, server_round: int) -> np.ndarray | None:
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

    def _private_size(self) -> int:
        cfg = self.train_cfg
        return private_head_size(cfg.private_head, cfg.decoder_config().image_size)

    def global_arrays(self) -> ArrayRecord:
        return ArrayRecord({"theta": Array(self.theta)})

    def record_failures(self, replies: list[Message], expected: set[int], phase: str) -> None:
        answered = {m.metadata.src_node_id for m in replies}
        for m in replies:
            if m.has_error():
                self.failures.append(f"{phase} node {m.metadata.src_node_id}: {m.error.reason}")
        for node in sorted(expected - answered):
            self.failures.append(f"{phase} node {node}: no reply before the round timeout")

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(list(replies), is_train=True)
        self.round_uploads = [
            SiteUpload(
                site_name(m),
                {k: a.numpy() for k, a in m.content["arrays"].items()},
                dict(m.content["metrics"]),
            )
            for m in valid
        ]
        if not self.apply_round(server_round, self.round_uploads):
            return None, None
        agg = {k: weighted(self.site_train, k) for k in ("train-loss", "seconds")}
        agg["fm-queries"] = float(sum(m["fm-queries"] for m in self.site_train.values()))
        return self.global_arrays(), MetricRecord(agg)

    def apply_round(self, server_round: int, uploads: list[SiteUpload]) -> bool:
        """Updates from the round's uploads (replayed where they are scalars), the guard, the
        aggregation and the server step; False when no update was usable. The audit calls
        this too, on the logged uploads, so a replay runs the very same code."""
        updates, weights, scalars = [], [], []
        for up in uploads:
            update = self._update_of(up, server_round)
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
            weights.append(1.0 if self.equal_weights else float(metrics["num-examples"]))
            if self.aggregation in SCALAR_AGGREGATIONS:
                scalars.append(unpack_scalars(up.arrays["scalars"].tobytes()))
        if not updates:
            return False
        if self.aggregation in SCALAR_AGGREGATIONS:
            combined = self._consensus_update(server_round, scalars)
        else:
            combined = aggregate_updates(
                updates, weights, self.aggregation, self.trim, self.malicious
            )
        self.theta = self.optimizer.step(self.theta, combined)
        return True

    def _consensus_update(
        self, server_round: int, uploads: list[tuple[float, np.ndarray]]
    ) -> np.ndarray:
        """The scalar-* rules: combine the accepted sites' scalars one by one (each one a
        loss difference along the same shared direction), then replay the combined scalars
        from the global decoder on the coordinator's own consensus trajectory."""
        c = float(np.median([c for c, _ in uploads]))  # every site calibrates the same c
        robust = combine_scalars([s for _, s in uploads], self.aggregation, self.trim)
        return self.consensus.replay_scalars(self.theta, server_round, c, robust, self.train_cfg)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        valid, _ = self._check_and_log_replies(list(replies), is_train=False)
        for msg in valid:
            self.site_evaluate[site_name(msg)] = dict(msg.content["metrics"])
        if not valid:
            return None
        return MetricRecord(
            {k: weighted(self.site_evaluate, k) for k in ("dice", "zero-shot-dice")}
        )
