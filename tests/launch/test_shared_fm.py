"""One FM service shared by every site of a run: TLS, a token per site, metering per site, and
the same decoder as each site running its own copy of the FM."""

from __future__ import annotations

import json
import stat

import numpy as np
import pytest

from baps_fed.federation.contract import FedTrainConfig, SiteSpec, initial_theta
from baps_fed.federation.in_process import InProcessFederation
from baps_fed.federation.local_site import LocalSite
from baps_fed.federation.round_aggregator import RoundAggregator
from baps_fed.federation.server_optimizer import ServerOptConfig, ServerOptimizer
from baps_fed.fm.sam_batched import BatchedSam
from baps_fed.fm.service.client import GrpcFM
from baps_fed.fm.service.errors import FMAuthError
from baps_fed.fm.torch_fm import TorchSamFM
from baps_fed.launch.shared_fm import site_counts, start_shared_fm
from sites.worker import train_line

SITES = [SiteSpec(f"hospital-{c}", "fundus", n=14, seed=i) for i, c in enumerate("abc")]
RUN = FedTrainConfig(local_steps=1, batch_size=2, sp_avg=1, prompt="box", private_head="box")


def _federation(fms: dict[str, object]) -> InProcessFederation:
    sites = [LocalSite(spec, RUN, fm=fms[spec.name]) for spec in SITES]
    aggregator = RoundAggregator(ServerOptimizer(ServerOptConfig()), initial_theta(RUN), RUN)
    return InProcessFederation(sites, aggregator)


def test_three_sites_on_one_service_train_what_their_own_fm_copies_train(tmp_path, small_sam):
    own = TorchSamFM(BatchedSam(small_sam), "small")
    alone = _federation({s.name: own for s in SITES})
    alone.run(2)
    service = start_shared_fm(
        TorchSamFM(BatchedSam(small_sam), "small"), [s.name for s in SITES], tmp_path / "svc"
    )
    try:
        remote = {s.name: GrpcFM.from_spec(service.specs[s.name]) for s in SITES}
        shared = _federation(remote)
        shared.run(2)
        np.testing.assert_array_equal(shared.theta, alone.theta)  # bit for bit
        assert shared.evaluate() == alone.evaluate()
        billed = service.images_by_site()
        assert billed == {name: fm.meter.images for name, fm in remote.items()}  # per site
        assert all(n > 0 for n in billed.values())
    finally:
        service.stop()


def test_the_service_files_are_private_and_specs_name_files_not_tokens(tmp_path, small_sam):
    fm = TorchSamFM(BatchedSam(small_sam), "small")
    service = start_shared_fm(fm, ["a", "b"], tmp_path / "svc")
    try:
        folder = tmp_path / "svc"
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        for path in [p for p in folder.rglob("*") if p.is_file()]:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        tokens = {p.read_text().strip() for p in (folder / "tokens").iterdir()}
        assert len(tokens) == 2
        for spec in service.specs.values():
            assert "tls_ca=" in spec and not any(t in spec for t in tokens)
        plain = f"grpc://127.0.0.1:{service.server.port}?tls_ca={folder / 'ca.crt'}"
        with pytest.raises(FMAuthError):  # TLS but no token: refused
            GrpcFM.from_spec(plain).segment(
                np.zeros((1, 32, 32, 3), np.uint8), boxes=np.array([[4, 4, 20, 20]], np.float32)
            )
    finally:
        service.stop()


def test_fm_tokens_writes_one_private_token_per_hospital_and_never_overwrites(tmp_path, capsys):
    from baps_fed.cli import main
    from baps_fed.fm.service.tokens import load_tokens

    out = tmp_path / "fm-tokens"
    assert main(["fm", "tokens", "--out", str(out), "hospital-a", "hospital-b"]) == 0
    policies = load_tokens(out / "tokens.toml")  # the service reads what was written
    assert sorted(p.name for p in policies.values()) == ["hospital-a", "hospital-b"]
    for name in ("hospital-a", "hospital-b"):
        assert stat.S_IMODE((out / "tokens" / name).stat().st_mode) == 0o600
    assert str(out / "tokens" / "hospital-a") in capsys.readouterr().out
    before = (out / "tokens.toml").read_text()
    assert main(["fm", "tokens", "--out", str(out), "hospital-c"]) == 2
    assert "tokens.toml exists; tokens are never overwritten" in capsys.readouterr().err
    assert (out / "tokens.toml").read_text() == before
    assert main(["fm", "tokens", "--out", str(tmp_path / "x"), "../evil"]) == 2
    assert "use letters, digits" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_site_counts_add_each_sites_reports_and_know_when_dp_kept_them_home(tmp_path):
    rounds = tmp_path / "rounds.json"
    history = [
        {"train": {"a": {"fm-queries": 16}, "b": {"spsa-step": 0, "epsilon": 0.4}},
         "evaluate": {"a": {"fm-queries": 8}, "b": {"fm-queries": 8}}},
        {"train": {"a": {"fm-queries": 16}}, "evaluate": {"a": {"fm-queries": 8}}},
    ]  # fmt: skip
    rounds.write_text(json.dumps({"history": history}))
    assert site_counts(rounds) == {"a": 48, "b": None}  # b: a DP site sends no train count


def test_a_dp_sites_terminal_line_says_what_stayed_home():
    line = train_line({"spsa-step": 4, "epsilon": 0.52, "delta": 1e-5})
    assert line.startswith("epsilon 0.52 (delta 1e-05)") and "not sent (DP" in line
    plain = train_line({"seconds": 2.0, "fm-queries": 16, "train-loss": 0.25})
    assert plain == "2.0 s, 16 FM queries, loss 0.2500"
