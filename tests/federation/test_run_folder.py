"""Nothing is lost by accident: a run folder is never replaced without --overwrite, a torn audit
line is dropped safely, and a damaged checkpoint is refused with what to do."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from baps_fed.cli import main
from baps_fed.federation.audit import AUDIT_LOG, truncate_log
from baps_fed.federation.checkpoint import (
    CHECKPOINT,
    CoordinatorState,
    check_run_folder,
    load_checkpoint,
    save_checkpoint,
)
from coordinator.app import RunRefused, run_rounds


def _state(theta: np.ndarray) -> CoordinatorState:
    return CoordinatorState(3, theta.astype(np.float32), {}, [{"round": 3}], {"train": {}})


def test_a_folder_holding_a_run_is_refused_unless_resumed_or_overwritten(tmp_path):
    check_run_folder(tmp_path, resume=False, overwrite=False)  # empty: fine
    (tmp_path / "rounds.json").write_text("{}")
    with pytest.raises(FileExistsError, match="holds a run .*--resume.*--overwrite"):
        check_run_folder(tmp_path, resume=False, overwrite=False)
    check_run_folder(tmp_path, resume=True, overwrite=False)
    check_run_folder(tmp_path, resume=False, overwrite=True)
    with pytest.raises(ValueError, match="either"):
        check_run_folder(tmp_path, resume=True, overwrite=True)


def test_the_coordinator_app_refuses_to_wipe_a_run(tmp_path):
    save_checkpoint(tmp_path, _state(np.zeros(4)))
    (tmp_path / AUDIT_LOG).write_text('{"round": 1}\n')
    context = Context(
        run_id=1, node_id=0, node_config={}, state=RecordDict(),
        run_config={"out-dir": str(tmp_path)},
    )  # fmt: skip
    with pytest.raises(RunRefused, match="refused the run: .* holds a run .*--resume"):
        run_rounds(None, context)  # type: ignore[arg-type]
    assert (tmp_path / AUDIT_LOG).read_text() == '{"round": 1}\n'  # untouched


@pytest.mark.parametrize(
    "args",
    [
        ["coordinator", "--insecure", "--no-node-auth"],
        ["simulate"],
        ["train", "--data", "fundus"],
    ],
)
def test_commands_refuse_a_run_folder_before_starting_anything(tmp_path, capsys, args):
    for marker in ("rounds.json", "metrics.json"):
        (tmp_path / marker).write_text("{}")
    assert main([*args, "--out", str(tmp_path)]) == 2
    assert "holds a run" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "rounds.json"]


def test_a_torn_last_audit_line_is_dropped_and_said(tmp_path):
    log = tmp_path / AUDIT_LOG
    good = [json.dumps({"round": r, "uploads": []}) for r in (1, 2)]
    log.write_text("\n".join(good) + '\n{"round": 3, "uplo')
    note = truncate_log(tmp_path, last_round=2)
    assert "cut short" in note
    assert log.read_text().splitlines() == good


def test_a_damaged_audit_line_before_the_last_is_an_error(tmp_path):
    log = tmp_path / AUDIT_LOG
    log.write_text('{"round": 1}\n{"rou\n{"round": 3}\n')
    with pytest.raises(ValueError, match="line 2 of 3 is damaged"):
        truncate_log(tmp_path, last_round=3)
    assert log.read_text() == '{"round": 1}\n{"rou\n{"round": 3}\n'  # left as it was


def test_a_truncated_checkpoint_is_refused_with_what_to_do(tmp_path):
    save_checkpoint(tmp_path, _state(np.ones(8)))
    path = tmp_path / CHECKPOINT
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="cut short or altered"):
        load_checkpoint(tmp_path)


def test_a_checkpoint_holding_nan_is_refused(tmp_path):
    theta = np.ones(8)
    theta[3] = np.nan
    save_checkpoint(tmp_path, _state(theta))
    with pytest.raises(ValueError, match="1 non-finite values"):
        load_checkpoint(tmp_path)
    save_checkpoint(tmp_path, _state(np.ones(8)))
    assert load_checkpoint(tmp_path).round == 3
