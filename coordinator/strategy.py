"""FedAvg over decoder *updates*, weighted by examples, with a server optimiser on top.

Flower's FedAvg samples nodes, builds the messages and checks replies; this subclass replaces
the aggregation: sites send ``update = theta_site - theta_global`` and the server optimiser
(``baps_fed.aggregate``) applies their example-weighted mean, so server momentum and FedAdam
keep a state the coordinator checkpoints. Per-site metrics are kept by site name for the report.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg

from baps_fed.aggregate import ServerOptimizer, weighted_mean
from baps_fed.fed_report import weighted


def site_name(msg: Message) -> str:
    site = msg.content.get("site") if not msg.has_error() else None
    if site is not None and "name" in site:
        return str(site["name"])
    return f"node-{msg.metadata.src_node_id}"


class UpdateAveraging(FedAvg):
    def __init__(self, optimizer: ServerOptimizer, theta: np.ndarray, **kwargs) -> None:
        super().__init__(**kwargs)  # replies and messages use FedAvg's "arrays" key
        self.optimizer = optimizer
        self.theta = np.asarray(theta, np.float32)
        self.site_train: dict[str, dict[str, float]] = {}
        self.site_evaluate: dict[str, dict[str, float]] = {}
        self.failures: list[str] = []

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
        if not valid:
            return None, None
        updates, weights = [], []
        for msg in valid:
            update = msg.content["arrays"]["update"].numpy()
            if update.shape != self.theta.shape:
                self.failures.append(f"train {site_name(msg)}: update shape {update.shape}")
                continue
            metrics = dict(msg.content["metrics"])
            self.site_train[site_name(msg)] = metrics
            updates.append(update)
            weights.append(float(metrics["num-examples"]))
        if not updates:
            return None, None
        self.theta = self.optimizer.step(self.theta, weighted_mean(updates, weights))
        agg = {k: weighted(self.site_train, k) for k in ("train-loss", "seconds")}
        agg["fm-queries"] = float(sum(m["fm-queries"] for m in self.site_train.values()))
        return self.global_arrays(), MetricRecord(agg)

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
