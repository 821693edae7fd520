"""What may leave a site: the allow-list every outgoing message is checked against.

Only the decoder update (or its seed-and-scalar form), example counts, aggregate metrics,
privacy spent and the site's name may leave (under DP, of a train reply's metrics only those the
accountant covers: ``contract.DP_TRAIN_METRICS``); never images, masks, points, per-image values
or FM outputs. The check is by record name, record type, key and value shape, so a new field
cannot slip out unnoticed: adding one means adding it here, in review.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.common.constant import ErrorCode

from baps_fed.federation.contract import DP_TRAIN_METRICS, FedTrainConfig
from baps_fed.federation.site_errors import (
    error_kind,
    error_reason,
    is_allowed_reason,
    new_reference,
)
from baps_fed.federation.uploads import UploadShape, upload_shape

logger = logging.getLogger(__name__)

TRAIN_METRICS = frozenset(
    {
        "num-examples",
        "train-loss",
        "skipped-steps",
        "fm-queries",
        "seconds",
        "epsilon",
        "delta",
        "spsa-step",  # the optimiser's step count at the round's start (replay bookkeeping)
    }
)
EVALUATE_METRICS = frozenset(
    {
        "num-examples",
        "dice",
        "iou",
        "hd95",
        "global-dice",
        "zero-shot-dice",
        "zero-shot-iou",
        "zero-shot-hd95",
        "fm-queries",
    }
)
SITE_KEYS = frozenset({"name"})
MAX_NAME = 64


class OutboxViolation(RuntimeError):
    """A site tried to send something outside the allow-list; nothing was sent."""


def check_outgoing(content: RecordDict, message_type: str, upload: int | UploadShape) -> None:
    """Raise OutboxViolation unless ``content`` holds only what a reply of this type may.

    ``upload``: the one array a train reply carries, by name, exact 1-D size and dtype (an int
    n means a dense float32 ``update`` of n, the decoder's parameter count); anything else
    could carry an image.
    """
    kind = message_type.split(".")[0]
    if kind not in ("train", "evaluate"):
        raise OutboxViolation(f"sites send no {message_type!r} replies")
    allowed: dict[str, type] = {"metrics": MetricRecord, "site": ConfigRecord}
    if kind == "train":
        allowed["arrays"] = ArrayRecord
    for name, record in content.items():
        if name not in allowed or not isinstance(record, allowed[name]):
            raise OutboxViolation(
                f"{kind} reply: record {name!r} ({type(record).__name__}) is not allowed out"
            )
    if "metrics" not in content:
        raise OutboxViolation(f"{kind} reply without its metrics record")
    _check_metrics(content["metrics"], TRAIN_METRICS if kind == "train" else EVALUATE_METRICS)
    # a DP run's, and any reply that books epsilon
    if kind == "train" and (_shape(upload).dp or "epsilon" in content["metrics"]):
        _check_dp_metrics(content["metrics"])
    if "site" in content:
        _check_site(content["site"])
    if kind == "train":
        if "arrays" not in content:
            raise OutboxViolation("train reply without its update")
        _check_upload(content["arrays"], _shape(upload))


def _shape(upload: int | UploadShape) -> UploadShape:
    if isinstance(upload, UploadShape):
        return upload
    return upload_shape(FedTrainConfig(upload="dense"), upload)


def _check_metrics(record: MetricRecord, keys: frozenset[str]) -> None:
    for key, value in record.items():
        if key not in keys:
            raise OutboxViolation(f"metric {key!r} is not on the allow-list")
        if not isinstance(value, (int, float)):  # lists could carry per-image values
            raise OutboxViolation(f"metric {key!r} must be one number, got {type(value).__name__}")


def _check_dp_metrics(record: MetricRecord) -> None:
    """A reply that books epsilon carries nothing the accountant does not cover."""
    extra = sorted(set(record.keys()) - DP_TRAIN_METRICS)
    if extra:
        raise OutboxViolation(
            f"a DP train reply may carry only {', '.join(sorted(DP_TRAIN_METRICS))}; "
            f"{', '.join(extra)} would reveal the site's data or its secret batches"
        )


def _check_site(record: ConfigRecord) -> None:
    for key, value in record.items():
        if key not in SITE_KEYS:
            raise OutboxViolation(f"site field {key!r} is not on the allow-list")
        if not isinstance(value, str) or len(value) > MAX_NAME:
            raise OutboxViolation(f"site {key!r} must be a string of <= {MAX_NAME} characters")


def _check_upload(record: ArrayRecord, upload: UploadShape) -> None:
    if set(record.keys()) != {upload.name}:
        raise OutboxViolation(
            f"arrays {sorted(record.keys())} leave a site; only {upload.name!r} may"
        )
    array = record[upload.name]
    shape = tuple(array.shape)
    if shape != (upload.size,):
        raise OutboxViolation(
            f"the {upload.name} has shape {shape}; this run's is ({upload.size},)"
        )
    if array.dtype != upload.dtype:
        raise OutboxViolation(f"the {upload.name} is {array.dtype}; this run's is {upload.dtype}")


def outbox_guard(
    upload: Callable[[Context], UploadShape],
    site_name: Callable[[Context], str | None] = lambda context: None,
):
    """A ClientApp mod, the outermost: every reply passes check_outgoing before it leaves the
    site, and an error leaves only as a fixed kind, a reference and the site's name
    (``site_errors``, ``site_name(context)``: None when unknown); the exception itself, with
    its paths and file names, stays in the site's log."""

    def mod(msg: Message, context: Context, call_next) -> Message:
        try:
            reply = call_next(msg, context)
            if not reply.has_error():
                check_outgoing(reply.content, msg.metadata.message_type, upload(context))
                return reply
            raise SiteReplyError(reply.error.reason)  # an inner mod's error: its text stays
        except Exception as err:
            return _error_reply(msg, err, _name_or_none(site_name, context))

    return mod


class SiteReplyError(RuntimeError):
    """An error reply made inside the site (by an inner mod), re-issued as a fixed kind."""


# kinds whose cause the exception's own text says in full: one log line, no traceback
EXPECTED_KINDS = frozenset(
    {"privacy-budget-spent", "configuration", "data", "fm-unavailable", "fm-budget", "fm-refused"}
)


def _name_or_none(site_name: Callable[[Context], str | None], context: Context) -> str | None:
    try:
        return site_name(context)
    except Exception:  # a site that cannot even say its name still answers with its kind
        return None


def _error_reply(msg: Message, err: Exception, site: str | None = None) -> Message:
    kind, ref = error_kind(err, OutboxViolation), new_reference()
    who = f"site {site}" if site else "site"
    phase = msg.metadata.message_type
    rnd = msg.content.get("config", {}).get("server-round", "?") if msg.has_content() else "?"
    if kind in EXPECTED_KINDS:  # one line, as the operator reads it (simulation: the terminal)
        verb = "declined" if kind == "privacy-budget-spent" else "failed"
        logger.error("%s: %s round %s %s: %s (site reference %s): %s", who, phase, rnd, verb,
                     kind, ref, err)  # fmt: skip
        logger.debug("site reference %s", ref, exc_info=err)  # its traceback, at debug level
    else:  # a bug or a leak the guard stopped: the whole traceback, in the site's own log
        logger.error("%s: %s round %s failed: %s (site reference %s)", who, phase, rnd, kind,
                     ref, exc_info=err)  # fmt: skip
    reason = error_reason(kind, ref, site)
    assert is_allowed_reason(reason)
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)
