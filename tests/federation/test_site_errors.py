"""Error replies leave a site only as a fixed kind and a reference: no path, no patient file
name, no traceback reaches the coordinator, its report or its rounds.json."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode

from baps_fed.data.sample import DatasetError
from baps_fed.federation.audit import audit_run
from baps_fed.federation.checkpoint import load_checkpoint
from baps_fed.federation.contract import FedTrainConfig, PrivacyBudgetExhausted, initial_theta
from baps_fed.federation.site_errors import (
    ERROR_KINDS,
    describe_error,
    error_kind,
    error_reason,
    is_allowed_reason,
    reason_parts,
)
from baps_fed.flat_config import ConfigKeyError
from baps_fed.fm.errors import QueryBudgetExceeded
from baps_fed.fm.service.errors import FMAuthError, FMUnavailable
from baps_fed.fm.tiny import save_tiny_weights
from coordinator.app import RunRefused, run_rounds
from coordinator.app import main as coordinator_main
from sites.app import app as client_app
from sites.outbox import OutboxViolation, outbox_guard
from tests.conftest import SMALL_ARCH
from tests.flower_loopback import LoopbackGrid

PATIENT = "DOE_JOHN_19700101"  # a planted patient file name


@pytest.mark.parametrize(
    ("err", "kind"),
    [
        (PrivacyBudgetExhausted(f"site a declines: /data/{PATIENT}"), "privacy-budget-spent"),
        (QueryBudgetExceeded("spent"), "fm-budget"),
        (FMUnavailable("host down"), "fm-unavailable"),
        (FMAuthError("bad token"), "fm-refused"),
        (DatasetError(f"/data/{PATIENT}.png: unreadable"), "data"),
        (FileNotFoundError(f"/data/{PATIENT}"), "data"),
        (ConfigKeyError("node config: unknown key"), "configuration"),
        (OutboxViolation("an image"), "outbox-violation"),
        (KeyError(PATIENT), "internal"),
    ],
)
def test_every_exception_has_a_fixed_kind(err, kind):
    assert error_kind(err, OutboxViolation) == kind
    reason = error_reason(kind, "0123abcd")
    assert is_allowed_reason(reason) and PATIENT not in reason


def test_only_the_fixed_form_is_allowed_and_shown():
    assert not is_allowed_reason(f"data (site reference 0123abcd) /data/{PATIENT}")
    assert not is_allowed_reason("nonsense (site reference 0123abcd)")
    assert not is_allowed_reason(None)
    traceback = f"Traceback ...\n  File /data/{PATIENT}.png"
    shown = describe_error(traceback, ErrorCode.UNKNOWN)
    assert PATIENT not in shown and "withheld" in shown
    # Flower's own errors: what the code means, never the text
    shown = describe_error(traceback, ErrorCode.CLIENT_APP_CRASHED)
    assert PATIENT not in shown and "crashed" in shown and "\n" not in shown
    assert "went offline" in describe_error("node unavailable", ErrorCode.NODE_UNAVAILABLE)
    shown = describe_error(error_reason("data", "0123abcd"), ErrorCode.CLIENT_APP_RAISED_EXCEPTION)
    assert shown == f"data: {ERROR_KINDS['data']} (site reference 0123abcd)"


def test_an_error_reason_names_the_site_when_its_name_is_plain():
    named = error_reason("data", "0123abcd", "hospital-a")
    assert named == "data (site reference 0123abcd, site name hospital-a)"
    assert is_allowed_reason(named)
    assert reason_parts(named) == ("data", "0123abcd", "hospital-a")
    assert describe_error(named, ErrorCode.CLIENT_APP_RAISED_EXCEPTION) == (
        f"data: {ERROR_KINDS['data']} (site reference 0123abcd)"
    )
    # a name that could carry more than a name is left out, never sent
    for odd in (f"/data/{PATIENT}", "a b", "x" * 65, "", "a)\n"):
        reason = error_reason("data", "0123abcd", odd)
        assert reason == "data (site reference 0123abcd)" and is_allowed_reason(reason)
    assert not is_allowed_reason("data (site reference 0123abcd, site name a/b)")


def _message() -> Message:
    content = RecordDict({"config": ConfigRecord({"server-round": 1})})
    return Message(content, dst_node_id=5, message_type="train")


def _context() -> Context:
    return Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={})


def test_the_guard_turns_an_exception_into_a_kind_and_logs_the_details(caplog):
    guard = outbox_guard(lambda context: None)  # type: ignore[arg-type,return-value]

    def failing(msg, context):
        raise DatasetError(f"/hospital/images/{PATIENT}.png: cannot be decoded")

    with caplog.at_level(logging.ERROR, logger="sites.outbox"):
        reply = guard(_message(), _context(), failing)
    assert reply.has_error() and is_allowed_reason(reply.error.reason)
    assert reply.error.reason.startswith("data (site reference ")
    ref = reply.error.reason.split()[-1].rstrip(")")
    assert ref in caplog.text and PATIENT in caplog.text  # the site's own log keeps it


def test_an_inner_error_reply_is_reissued_without_its_text():
    guard = outbox_guard(lambda context: None)  # type: ignore[arg-type,return-value]

    def inner_error(msg, context):
        error = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"/data/{PATIENT}")
        return Message(error, reply_to=msg)

    reply = guard(_message(), _context(), inner_error)
    assert reply.has_error() and is_allowed_reason(reply.error.reason)
    assert PATIENT not in reply.error.reason


def test_a_planted_patient_name_never_reaches_the_coordinator(tmp_path, small_sam):
    weights = tmp_path / "fm.pt"
    save_tiny_weights(weights, small_sam, SMALL_ARCH, {})
    missing = tmp_path / "hospital" / PATIENT  # a site whose data path names a patient
    sites = [
        {"data": "fundus", "site-name": "a", "n": 16, "seed": 1, "fm": f"tiny:{weights}"},
        {"data": str(missing), "site-name": "b", "fm": f"tiny:{weights}"},
    ]
    out = tmp_path / "run"
    run_config = {
        "rounds": 1, "min-sites": 1, "local-steps": 1, "batch-size": 2, "sp-avg": 2,
        "out-dir": str(out), "sites": json.dumps(sites),
    }  # fmt: skip
    grid = LoopbackGrid(client_app, {11: {"partition-id": 0}, 12: {"partition-id": 1}}, run_config)
    context = Context(
        run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )
    state = run_rounds(grid, context)
    errors = [r for r in grid.replies if r.has_error()]
    assert len(errors) == 2  # site b's train and evaluate replies
    for reply in errors:
        assert is_allowed_reason(reply.error.reason), reply.error.reason
        assert PATIENT not in reply.error.reason
    failures = state.history[0]["failures"]
    assert any("data: the site's data could not be read" in f for f in failures)
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in (".md", ".json", ".csv", ".jsonl"):
            assert PATIENT not in path.read_text(errors="replace"), path


def test_an_error_reply_does_not_count_towards_min_sites(tmp_path, small_sam, capsys):
    """min-sites 2, one site failing every round: no round is aggregated from the other's update
    alone; each round says which site failed and that min-sites was not met, and the run
    ends as failed."""
    weights = tmp_path / "fm.pt"
    save_tiny_weights(weights, small_sam, SMALL_ARCH, {})
    sites = [
        {"data": "fundus", "site-name": "a", "n": 16, "seed": 1, "fm": f"tiny:{weights}"},
        {"data": str(tmp_path / "missing"), "site-name": "b", "fm": f"tiny:{weights}"},
    ]
    out = tmp_path / "run"
    run_config = {
        "rounds": 2, "min-sites": 2, "local-steps": 1, "batch-size": 2, "sp-avg": 2,
        "out-dir": str(out), "sites": json.dumps(sites),
    }  # fmt: skip
    grid = LoopbackGrid(client_app, {11: {"partition-id": 0}, 12: {"partition-id": 1}}, run_config)
    context = Context(
        run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )
    with pytest.raises(RunRefused, match="none of its 2 rounds had the 2 usable updates"):
        coordinator_main(grid, context)
    state = load_checkpoint(out)
    theta0 = initial_theta(FedTrainConfig.from_flat(run_config))
    np.testing.assert_array_equal(state.theta, theta0)  # never moved by a's update alone
    not_met = (
        "min-sites not met: 1 usable update (a) of the 2 needed (failed or rejected: b); the "
        "round was not aggregated, the global decoder is unchanged"
    )
    for entry in state.history:
        assert set(entry["train"]) == {"a"} and entry["aggregate"] == {}
        assert any(f.startswith("train b: data: ") for f in entry["failures"])
        assert not_met in entry["failures"]
    assert f"  round 2, {not_met}" in capsys.readouterr().out
    assert f"- round 1, {not_met}" in (out / "report.md").read_text()
    assert audit_run(out).ok  # the replay skips the same rounds
