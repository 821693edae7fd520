"""Bad numbers are refused before anything is paid for, and `evaluate --checkpoint` works on
what `train` wrote."""

from __future__ import annotations

import json

import pytest

from baps_fed.cli import main
from baps_fed.fm.tiny import save_tiny_weights
from tests.conftest import SMALL_ARCH


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["simulate", "--local-steps", "0"], "local-steps must be a positive whole number, got 0"),
        (["simulate", "--n", "0"], "n must be a positive whole number, got 0"),
        (["simulate", "--rounds", "-5"], "rounds must be a positive whole number, got -5"),
        (["train", "--data", "fundus", "--steps", "-5"], "steps must be a positive whole number"),
        (["train", "--data", "fundus", "--batch", "0"], "batch size must be >= 1, got 0"),
        (["train", "--data", "fundus", "--val-every", "0"], "val-every must be a positive"),
        (["train", "--data", "fundus", "--n", "0"], "n must be a positive whole number"),
        (["make-data", "--modality", "fundus", "--n", "0"], "n must be a positive whole number"),
        (
            ["coordinator", "--insecure", "--no-node-auth", "--config", "local-steps=abc"],
            "config local-steps: expected int, got 'abc'",
        ),
    ],
)
def test_bad_numbers_fail_fast_with_a_clear_message(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert main([*args, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing was started or written


def test_evaluate_a_checkpoint_that_train_wrote(tmp_path, capsys, small_sam):
    weights = tmp_path / "fm.pt"
    save_tiny_weights(weights, small_sam, SMALL_ARCH, {})
    fm = f"tiny:{weights}"
    run = tmp_path / "run"
    common = ["--data", "fundus", "--n", "20", "--fm", fm]
    assert main(["train", *common, "--out", str(run), "--steps", "2", "--val-every", "1"]) == 0
    capsys.readouterr()
    best = run / "checkpoints" / "best.pt"
    assert main(["evaluate", *common, "--checkpoint", str(best)]) == 0
    out = capsys.readouterr().out
    assert "zero-shot" in out and "prompted" in out and "Dice gain" in out
    assert main(["evaluate", *common, "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err

    # --resume keeps the run's settings: a changed one is refused, each named
    resume = ["train", *common, "--out", str(run), "--resume"]
    assert main([*resume, "--lr", "0.05", "--preset", "paper", "--steps", "3"]) == 2
    err = capsys.readouterr().err
    assert "--lr 0.05 (the run used 0.02)" in err and "--preset paper (the run used basis)" in err
    assert main([*resume, "--lr", "0.02", "--steps", "3"]) == 0  # the same value, a longer run
    assert "stopped: done" in capsys.readouterr().out


def test_a_spent_budget_ends_zero_shot_cleanly_with_what_was_scored(tmp_path, capsys, small_sam):
    weights = tmp_path / "fm.pt"
    save_tiny_weights(weights, small_sam, SMALL_ARCH, {})
    table = tmp_path / "zero_shot.json"
    args = ["zero-shot", "--fm", f"tiny:{weights}", "--data", "fundus", "ultrasound"]
    args += ["--n", "20", "--budget", "30", "--json", str(table)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "stopped at ultrasound after 0 of" in out and "query budget of 30 images" in out
    rows = json.loads(table.read_text())
    assert rows[0]["data"] == "fundus" and rows[0]["n"] > 0 and "stopped" not in rows[0]
    assert rows[1]["n"] == 0 and "stopped" in rows[1]
