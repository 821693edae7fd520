"""`baps-fed evaluate` scores the federated decoder of a coordinator checkpoint that a real run
wrote, and refuses a cut, non-finite or other-architecture checkpoint in one line naming it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from baps_fed.cli import main
from baps_fed.federation.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from baps_fed.federation.contract import FedTrainConfig, initial_theta
from baps_fed.federation.global_decoder import decoder_to_score
from baps_fed.fm.tiny import save_tiny_weights
from coordinator.app import run_rounds
from sites.app import app as client_app
from tests.conftest import SMALL_ARCH
from tests.flower_loopback import LoopbackGrid


def _federated_run(tmp_path: Path, fm: str) -> Path:
    """One round of one site through the coordinator's own code: its checkpoint."""
    sites = [{"data": "fundus", "site-name": "a", "n": 16, "seed": 1, "fm": fm}]
    out = tmp_path / "run"
    run_config = {
        "rounds": 1, "min-sites": 1, "local-steps": 2, "batch-size": 2, "sp-avg": 2,
        "prompt": "box", "out-dir": str(out), "sites": json.dumps(sites),
    }  # fmt: skip
    grid = LoopbackGrid(client_app, {11: {"partition-id": 0}}, run_config)
    context = Context(
        run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )
    run_rounds(grid, context)
    return out


@pytest.fixture
def fm(tmp_path, small_sam) -> str:
    weights = tmp_path / "fm.pt"
    save_tiny_weights(weights, small_sam, SMALL_ARCH, {})
    return f"tiny:{weights}"


def test_evaluate_scores_the_federated_decoder(tmp_path, fm, capsys):
    out = _federated_run(tmp_path, fm)
    saved = load_checkpoint(out)
    decoder, trained = decoder_to_score(out / CHECKPOINT)
    np.testing.assert_array_equal(decoder.get_theta(), saved.theta)  # the shared decoder
    assert not np.array_equal(saved.theta, initial_theta(FedTrainConfig()))  # one it trained
    assert trained == "box"
    capsys.readouterr()
    args = ["evaluate", "--data", "ultrasound", "--n", "20", "--fm", fm]
    assert main([*args, "--checkpoint", str(out / CHECKPOINT)]) == 0
    printed = capsys.readouterr().out
    assert "(the decoder was trained with box prompts)" in printed  # its run's prompt kind
    assert "zero-shot" in printed and "prompted" in printed and "Dice gain" in printed


def test_evaluate_refuses_a_cut_non_finite_or_foreign_checkpoint(tmp_path, fm, capsys):
    out = _federated_run(tmp_path, fm)
    good = load_checkpoint(out)
    cut = tmp_path / "cut.npz"
    cut.write_bytes((out / CHECKPOINT).read_bytes()[:300])
    good.theta[3] = np.nan
    nan = save_checkpoint(tmp_path / "nan", good)
    good.theta[3] = 0.0
    good.config["train"]["preset"] = "paper"  # the 72 parameters of the basis decoder
    foreign = save_checkpoint(tmp_path / "foreign", good)
    capsys.readouterr()
    for path, message in [
        (cut, "not a readable coordinator checkpoint"),
        (nan, "the checkpoint's decoder holds 1 non-finite values"),
        (foreign, "its decoder has 72 parameters, but the 'paper' decoder its run settings"),
    ]:
        args = ["evaluate", "--data", "fundus", "--n", "20", "--fm", fm]
        assert main([*args, "--checkpoint", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"baps-fed evaluate: error: {path}: ") and message in err, err
        assert err.count("\n") == 1, err  # one line, no traceback
