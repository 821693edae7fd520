"""The Flower side of a round: Flower's FedAvg samples sites, sends messages and checks replies;
``baps_fed.federation.RoundAggregator`` does the rest (decode, guard, aggregate, server step).

This adapter only turns Flower messages into ``SiteUpload``s and back, names sites by the name
their replies carry (an error reply too; a silent site by the name it last gave, else as an
unnamed node), and keeps each site's evaluation metrics for the report.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import validate_message_reply_consistency

from baps_fed.evaluation.federation_report import weighted
from baps_fed.federation.round_aggregator import RoundAggregator
from baps_fed.federation.site_errors import describe_error, reason_parts
from baps_fed.federation.uploads import SiteUpload


def reply_name(msg: Message) -> str | None:
    """The name a reply gives for its site: its "site" record, or its error reason's."""
    if msg.has_error():
        parts = reason_parts(msg.error.reason)
        return parts[2] if parts else None
    site = msg.content.get("site")
    return str(site["name"]) if site is not None and "name" in site else None


def site_name(msg: Message) -> str:
    return reply_name(msg) or f"node-{msg.metadata.src_node_id}"


def train_summary(site_train: dict[str, dict[str, float]]) -> dict[str, float]:
    """The round's training metrics over sites, of those they report (under DP, none of
    these: they stay at the sites)."""
    reported = [m for m in site_train.values() if "num-examples" in m]
    if not reported:
        return {}
    summary = {k: weighted(site_train, k) for k in ("train-loss", "seconds")}
    summary["fm-queries"] = float(sum(m.get("fm-queries", 0) for m in reported))
    return summary


def unnamed(node: int) -> str:
    return f"unnamed site (Flower node {node})"


class UpdateAveraging(FedAvg):
    def __init__(self, aggregator: RoundAggregator, **kwargs) -> None:
        super().__init__(**kwargs)  # replies and messages use FedAvg's "arrays" key
        self.agg = aggregator
        self.site_evaluate: dict[str, dict[str, float]] = {}
        self.round_uploads: list[SiteUpload] = []  # the last round's, for the audit log
        self.names: dict[int, str] = {}  # Flower node id -> the name its site last gave
        self.error_kinds: list[str] = []  # this round's: a site error's kind, or "no-reply"
        self.train_failed: list[str] = []  # this round's sites whose train failed or was silent

    def start_round(self) -> None:
        self.agg.start_round()
        self.site_evaluate, self.round_uploads, self.error_kinds = {}, [], []
        self.train_failed = []

    def global_arrays(self) -> ArrayRecord:
        return ArrayRecord({"theta": Array(self.agg.theta)})

    def record_failures(self, replies: list[Message], sent: list[Message], phase: str) -> None:
        """One line per site that failed or did not answer: its name and the reason. A reply
        belongs to the node its message went to (Flower's own error replies come from the
        SuperLink, node 1, not from the site)."""
        dst = {m.metadata.message_id: m.metadata.dst_node_id for m in sent}
        answered, failed = set(), []
        for m in replies:
            node = dst.get(m.metadata.reply_to_message_id, m.metadata.src_node_id)
            answered.add(node)
            if (name := reply_name(m)) is not None:
                self.names[node] = name
            if m.has_error():
                error = describe_error(m.error.reason, m.error.code)
                self.agg.failures.append(f"{phase} {self.name_of(node)}: {error}")
                self.error_kinds.append(error.split(":")[0])
                failed.append(node)
        for node in sorted(set(dst.values()) - answered):
            self.error_kinds.append("no-reply")
            self.agg.failures.append(
                f"{phase} {self.name_of(node)}: no reply before the round timeout"
            )
            failed.append(node)
        if phase == "train":
            self.train_failed = [self.name_of(node) for node in failed]

    def name_of(self, node: int) -> str:
        return self.names.get(node) or unnamed(node)

    def _check_and_log_replies(
        self, replies, is_train: bool, validate: bool = True
    ) -> tuple[list[Message], list[Message]]:
        """FedAvg's check, without its log line per error reply (a Flower node id and the
        reply's raw text): ``record_failures`` names each failed site once."""
        replies = list(replies)
        valid = [m for m in replies if not m.has_error()]
        errors = [m for m in replies if m.has_error()]
        if validate and valid:
            validate_message_reply_consistency(
                replies=[m.content for m in valid],
                # DP sites withhold their example counts (contract.DP_TRAIN_METRICS) and are
                # weighed equally; every train reply carries its step count
                weighted_by_key="spsa-step" if is_train else self.weighted_by_key,
                check_arrayrecord=is_train,
            )
        return valid, errors

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
            for m in sorted(valid, key=site_name)  # arrival order must not change the sum
        ]
        if not self.agg.apply_round(server_round, self.round_uploads, self.train_failed):
            return None, None
        return self.global_arrays(), MetricRecord(train_summary(self.agg.site_train))

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
