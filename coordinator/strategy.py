"""The Flower side of a round: Flower's FedAvg samples sites, sends messages and checks replies;
``baps_fed.federation.RoundAggregator`` does the rest (decode, guard, aggregate, server step).

This adapter only turns Flower messages into ``SiteUpload``s and back, names sites by the name
their reply carries, and keeps each site's evaluation metrics for the report.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg

from baps_fed.evaluation.federation_report import weighted
from baps_fed.federation.round_aggregator import RoundAggregator
from baps_fed.federation.site_errors import describe_error
from baps_fed.federation.uploads import SiteUpload


def site_name(msg: Message) -> str:
    site = msg.content.get("site") if not msg.has_error() else None
    if site is not None and "name" in site:
        return str(site["name"])
    return f"node-{msg.metadata.src_node_id}"


class UpdateAveraging(FedAvg):
    def __init__(self, aggregator: RoundAggregator, **kwargs) -> None:
        super().__init__(**kwargs)  # replies and messages use FedAvg's "arrays" key
        self.agg = aggregator
        self.site_evaluate: dict[str, dict[str, float]] = {}
        self.round_uploads: list[SiteUpload] = []  # the last round's, for the audit log

    def start_round(self) -> None:
        self.agg.start_round()
        self.site_evaluate, self.round_uploads = {}, []

    def global_arrays(self) -> ArrayRecord:
        return ArrayRecord({"theta": Array(self.agg.theta)})

    def record_failures(self, replies: list[Message], expected: set[int], phase: str) -> None:
        answered = {m.metadata.src_node_id for m in replies}
        for m in replies:
            if m.has_error():
                error = describe_error(m.error.reason, m.error.code)
                self.agg.failures.append(f"{phase} node {m.metadata.src_node_id}: {error}")
        for node in sorted(expected - answered):
            self.agg.failures.append(f"{phase} node {node}: no reply before the round timeout")

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
        if not self.agg.apply_round(server_round, self.round_uploads):
            return None, None
        site_train = self.agg.site_train
        agg = {k: weighted(site_train, k) for k in ("train-loss", "seconds")}
        agg["fm-queries"] = float(sum(m["fm-queries"] for m in site_train.values()))
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
