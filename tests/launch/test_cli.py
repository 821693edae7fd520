"""The `baps-fed` command on real files."""

from __future__ import annotations

import numpy as np

from baps_fed.cli import main
from baps_fed.data.modalities import make_case
from baps_fed.data.readers import open_dataset


def test_make_data_writes_a_site_the_readers_load_back(tmp_path, capsys):
    out = tmp_path / "site"
    assert (
        main(
            [
                "make-data",
                "--modality",
                "ultrasound",
                "--n",
                "4",
                "--scanner",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "wrote 4 image/mask pairs" in capsys.readouterr().out
    ds = open_dataset(out)
    assert len(ds) == 4 and not ds.problems
    first = make_case("ultrasound", 0, scanner=1)
    np.testing.assert_array_equal(ds[0].image, first.image)  # PNG is lossless
    np.testing.assert_array_equal(ds[0].mask, first.mask)


def test_errors_are_reported_not_raised(tmp_path, capsys):
    code = main(["zero-shot", "--fm", "tiny", "--data", str(tmp_path / "missing")])
    assert code == 2
    err = capsys.readouterr().err
    assert "error" in err and "missing" in err


def test_simulate_on_flower_with_a_shared_fm_service(tmp_path, capsys, small_sam):
    """The real simulation runtime: a SuperLink, two simulated sites querying one FM service;
    everything it started is stopped afterwards (both ports closed)."""
    import json
    import re
    import socket

    from baps_fed.fm.tiny import save_tiny_weights
    from tests.conftest import SMALL_ARCH

    weights = tmp_path / "small.pt"
    save_tiny_weights(weights, small_sam, SMALL_ARCH, {})
    out_dir = tmp_path / "run"
    args = ["simulate", "--shared-fm", "--fm", f"tiny:{weights}", "--n", "12", "--sites", "2"]
    args += ["--rounds", "1", "--local-steps", "1", "--out", str(out_dir)]
    assert main(args) == 0
    out = capsys.readouterr().out
    fm_port = int(re.search(r"for all 2 sites at 127\.0\.0\.1:(\d+): TLS", out).group(1))
    link_port = int(re.search(r"SuperLink \(simulation\) on 127\.0\.0\.1:(\d+)", out).group(1))
    for site in ("dermoscopy-a", "colonoscopy-b"):
        assert re.search(rf"^{site}\s+\d+\s+0\.\d+", out, re.M), out
    assert f"report: {out_dir / 'report.md'}" in out
    rounds = json.loads((out_dir / "rounds.json").read_text())["history"]
    assert [r["round"] for r in rounds] == [1]
    assert set(rounds[0]["train"]) == {"dermoscopy-a", "colonoscopy-b"}
    calls, requests = map(int, re.search(r"(\d+) FM calls for (\d+) requests", out).groups())
    assert requests > 0 and 1 <= calls <= requests
    usage = json.loads((out_dir / "fm_service_usage.json").read_text())
    assert set(usage) == {"dermoscopy-a", "colonoscopy-b"}
    for row in usage.values():  # the service billed each site what the site counted
        assert row["service"] == row["site"] > 0
    tokens = [p.read_text().strip() for p in (out_dir / "fm_service/tokens").iterdir()]
    assert len(set(tokens)) == 2  # one token per site, none of them in what the run records
    for record in ("run_config.toml", "run.log", "rounds.json", "report.md"):
        text = (out_dir / record).read_text()
        assert not any(token in text for token in tokens), record
    assert "tls_ca=" in (out_dir / "run_config.toml").read_text()
    for port in (fm_port, link_port):  # the service and the SuperLink were stopped
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0
