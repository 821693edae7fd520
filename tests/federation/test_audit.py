"""``audit_run`` on a run folder built without Flower: three rounds of hand-made uploads through
``RoundAggregator``, logged with ``append_round``, checkpointed and described in rounds.json as
the coordinator does (coordinator/app.py, evaluation/federation_report.py)."""

from __future__ import annotations

import base64
import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

from baps_fed.federation.audit import AUDIT_LOG, append_round, audit_run, theta_hash
from baps_fed.federation.checkpoint import (
    CoordinatorState,
    load_checkpoint,
    save_checkpoint,
)
from baps_fed.federation.contract import FedTrainConfig, initial_theta
from baps_fed.federation.coordinator_config import CoordinatorConfig
from baps_fed.federation.round_aggregator import RoundAggregator
from baps_fed.federation.seed_upload import pack_scalars, unpack_scalars
from baps_fed.federation.server_optimizer import ServerOptimizer
from baps_fed.federation.uploads import SiteUpload

ROUNDS = 3
# a 12-parameter decoder (visual prompt on a 2 x 2 grid) builds in milliseconds
TRAIN = FedTrainConfig(
    local_steps=2, sp_avg=2, private_head="none", lr=0.02, preset="vp", vp_grid=2
)
STEP = TRAIN.local_steps * TRAIN.lr  # the sign bound: 2 steps of 0.02


def _uploads(rnd: int, dim: int, rng: np.random.Generator) -> list[SiteUpload]:
    """Site "a" sends a dense sign update, site "b" its seed-and-scalar bytes."""
    dense = rng.choice([-STEP, 0.0, STEP], dim).astype(np.float32)
    scalars = rng.normal(0, 1, (TRAIN.local_steps, TRAIN.sp_avg)).astype(np.float32)
    blob = np.frombuffer(pack_scalars(0.1, scalars), np.uint8)
    first_step = (rnd - 1) * TRAIN.local_steps
    return [
        SiteUpload("a", {"update": dense}, {"num-examples": 10, "train-loss": 0.5}),
        SiteUpload("b", {"scalars": blob}, {"num-examples": 30, "spsa-step": first_step}),
    ]


def _write_run(out: Path, coord: CoordinatorConfig) -> CoordinatorState:
    out.mkdir(parents=True)
    config = {"coordinator": asdict(coord), "train": asdict(TRAIN)}
    theta0 = initial_theta(TRAIN)
    aggregator = RoundAggregator(
        ServerOptimizer(coord.server_optimizer()),
        theta0,
        TRAIN,
        {},
        coord.aggregation,  # type: ignore[arg-type]
        coord.trim_fraction,
        coord.krum_malicious,
    )
    rng = np.random.default_rng(5)
    state = CoordinatorState(0, theta0, {}, [], config)
    for rnd in range(1, ROUNDS + 1):
        aggregator.start_round()
        uploads = _uploads(rnd, theta0.size, rng)
        assert aggregator.apply_round(rnd, uploads)
        assert aggregator.failures == [], aggregator.failures
        assert set(aggregator.site_train) == {"a", "b"}
        state.audit_head = append_round(out, rnd, uploads, aggregator.theta, state.audit_head)
        state.history.append({"round": rnd, "train": aggregator.site_train})
        state.round, state.theta = rnd, aggregator.theta
        state.optimizer = aggregator.optimizer.state
        state.replicas = {n: r.to_arrays() for n, r in aggregator.replicas.items()}
        save_checkpoint(out, state)
        (out / "rounds.json").write_text(
            json.dumps({"config": state.config, "history": state.history}, indent=1)
        )
    assert not np.array_equal(state.theta, theta0)  # the rounds moved the decoder
    return state


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("audit") / "run"
    _write_run(out, CoordinatorConfig(server_opt="fedavgm", out_dir=str(out)))
    return out


@pytest.fixture
def run(run_dir, tmp_path) -> Path:
    """A copy of the run that a test may alter."""
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def _lines(run: Path) -> list[str]:
    return (run / AUDIT_LOG).read_text().splitlines()


def _write_lines(run: Path, lines: list[str]) -> None:
    (run / AUDIT_LOG).write_text("".join(line + "\n" for line in lines))


def _alter_array(run: Path, rnd: int, site: str, change) -> None:
    lines = _lines(run)
    entry = json.loads(lines[rnd - 1])
    (upload,) = [u for u in entry["uploads"] if u["site"] == site]
    (array,) = upload["arrays"].values()
    values = np.frombuffer(base64.b64decode(array["b64"]), array["dtype"]).copy()
    values = change(values)
    array["b64"] = base64.b64encode(values.tobytes()).decode()
    lines[rnd - 1] = json.dumps(entry)
    _write_lines(run, lines)


def test_the_untouched_run_passes(run_dir):
    result = audit_run(run_dir)
    assert result.ok, result.message
    assert result.rounds == ROUNDS
    saved = load_checkpoint(run_dir)
    entries = [json.loads(line) for line in _lines(run_dir)]
    assert [e["round"] for e in entries] == [1, 2, 3]
    assert entries[-1]["theta_sha256"] == theta_hash(saved.theta)
    assert entries[0]["prev_sha256"] == ""


@pytest.mark.parametrize("rnd", [1, 2, 3])
def test_one_altered_update_value_fails_at_its_round(run, rnd):
    def flip_one(values):
        values[3] = -STEP if values[3] != -STEP else STEP  # still within the sign bound
        return values

    _alter_array(run, rnd, "a", flip_one)
    result = audit_run(run)
    assert not result.ok
    assert result.rounds == rnd
    assert f"round {rnd}:" in result.message and "another decoder" in result.message


def test_altered_seed_scalars_fail_at_their_round(run):
    def negate_scalars(blob):
        c, scalars = unpack_scalars(blob.tobytes())
        return np.frombuffer(pack_scalars(c, -scalars), np.uint8)

    _alter_array(run, 2, "b", negate_scalars)
    result = audit_run(run)
    assert not result.ok and "round 2:" in result.message


def test_an_altered_example_count_fails(run):
    lines = _lines(run)
    entry = json.loads(lines[0])
    entry["uploads"][1]["metrics"]["num-examples"] = 10  # was 30: the weighted mean moves
    lines[0] = json.dumps(entry)
    _write_lines(run, lines)
    result = audit_run(run)
    assert not result.ok and "round 1:" in result.message


def test_a_removed_line_breaks_the_chain_at_the_next_round(run):
    lines = _lines(run)
    _write_lines(run, [lines[0], lines[2]])
    result = audit_run(run)
    assert not result.ok
    assert "round 3:" in result.message and "hash chain" in result.message


def test_a_removed_first_line_is_named_too(run):
    _write_lines(run, _lines(run)[1:])
    result = audit_run(run)
    assert not result.ok and "round 2:" in result.message


def test_a_removed_last_line_differs_from_the_checkpoints_head(run):
    _write_lines(run, _lines(run)[:-1])
    result = audit_run(run)
    assert not result.ok
    assert "last hash" in result.message


def test_a_checkpoint_whose_decoder_differs_fails(run):
    saved = load_checkpoint(run)
    theta = saved.theta.copy()
    theta[0] = np.nextafter(theta[0], np.float32(np.inf))  # one ulp
    save_checkpoint(run, replace(saved, theta=theta))
    result = audit_run(run)
    assert not result.ok
    assert f"round {ROUNDS}" in result.message and "checkpoint's decoder" in result.message


def test_a_checkpoint_claiming_another_round_fails(run):
    saved = load_checkpoint(run)
    save_checkpoint(run, replace(saved, round=ROUNDS + 1))
    result = audit_run(run)
    assert not result.ok and f"round {ROUNDS + 1}" in result.message


def test_a_central_dp_run_is_declined(run):
    rounds = json.loads((run / "rounds.json").read_text())
    rounds["config"]["coordinator"]["central_dp"] = "server-clipping"
    (run / "rounds.json").write_text(json.dumps(rounds))
    result = audit_run(run)
    assert not result.ok and result.rounds == 0
    assert "central-dp = server-clipping" in result.message


def test_a_folder_without_the_log_or_rounds_json_is_no_run(run):
    (run / "rounds.json").unlink()
    with pytest.raises(FileNotFoundError, match="rounds.json"):
        audit_run(run)
    (run / AUDIT_LOG).unlink()
    with pytest.raises(FileNotFoundError, match=AUDIT_LOG):
        audit_run(run)
