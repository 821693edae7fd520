"""The federation's logic in-process: aggregation, the outbox allow-list, the coordinator's
rounds, checkpoints, resume and failed sites (Flower's runtimes: test_deployment.py)."""

from __future__ import annotations

import base64
import hashlib
import json
import re

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict

from baps_fed.cli import main
from baps_fed.federation.aggregation import (
    aggregate_updates,
    reject_reason,
    trimmed_count,
    update_bound,
    weighted_mean,
)
from baps_fed.federation.audit import audit_run
from baps_fed.federation.checkpoint import load_checkpoint
from baps_fed.federation.contract import DP_TRAIN_METRICS, FedTrainConfig, initial_theta
from baps_fed.federation.coordinator_config import CoordinatorConfig
from baps_fed.federation.server_optimizer import ServerOptConfig, ServerOptimizer
from baps_fed.fm.tiny import save_tiny_weights
from coordinator.app import RunRefused, run_rounds
from coordinator.app import main as coordinator_main
from sites.app import app as client_app
from sites.outbox import OutboxViolation, check_outgoing
from tests.conftest import SMALL_ARCH
from tests.flower_loopback import LoopbackGrid

DIM = 72  # the basis decoder's parameters


# -- aggregation --------------------------------------------------------------------------------


def test_weighted_mean_weights_by_examples():
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    np.testing.assert_allclose(weighted_mean([a, b], [3, 1]), [0.75, 0.25])
    with pytest.raises(ValueError, match="differ in shape"):
        weighted_mean([a, np.zeros(3)], [1, 1])
    with pytest.raises(ValueError, match="positive total"):
        weighted_mean([a, b], [0, 0])


@pytest.mark.parametrize("name", ["fedavg", "fedavgm", "fedadam"])
def test_server_optimizer_state_round_trip_continues_exactly(name):
    rng = np.random.default_rng(0)
    updates = [rng.normal(size=5) for _ in range(4)]
    opt = ServerOptimizer(ServerOptConfig(name=name, lr=0.5))
    theta = np.zeros(5, np.float32)
    for u in updates[:2]:
        theta = opt.step(theta, u)
    restored = ServerOptimizer(ServerOptConfig(name=name, lr=0.5), dict(opt.state))
    t1, t2 = theta, theta.copy()
    for u in updates[2:]:
        t1, t2 = opt.step(t1, u), restored.step(t2, u)
    np.testing.assert_array_equal(t1, t2)
    if name == "fedavg":  # lr * mean update, nothing else
        np.testing.assert_allclose(theta, 0.5 * (updates[0] + updates[1]), rtol=1e-6)


def test_robust_aggregation_resists_one_bad_site_of_five():
    rng = np.random.default_rng(0)
    honest = [rng.normal(0.1, 0.01, 6) for _ in range(4)]
    for bad in (-10 * honest[0], 1e3 * np.ones(6)):
        updates, weights = [*honest, bad], [1, 1, 1, 1, 100]  # it also claims many examples
        mean = aggregate_updates(updates, weights, "mean")
        median = aggregate_updates(updates, weights, "median")
        trimmed = aggregate_updates(updates, weights, "trimmed-mean", trim=0.2)
        assert np.abs(mean - 0.1).max() > 1
        assert np.abs(median - 0.1).max() < 0.05 and np.abs(trimmed - 0.1).max() < 0.05
    with pytest.raises(ValueError, match="aggregation must be"):
        aggregate_updates(honest, [1] * 4, "bulyan")  # type: ignore[arg-type]


def test_krum_is_flowers_selection_and_leaves_the_outlier_out():
    rng = np.random.default_rng(3)
    honest = [rng.normal(0.1, 0.01, 6) for _ in range(4)]
    updates = [*honest, -10 * honest[0]]
    krum = aggregate_updates(updates, [1, 1, 1, 1, 50], "krum", malicious=1)
    assert any(np.allclose(krum, u) for u in honest)  # one honest update, as Krum picks
    multi = aggregate_updates(updates, [1, 1, 1, 1, 50], "multi-krum", malicious=1)
    np.testing.assert_allclose(multi, np.mean(honest, axis=0), rtol=1e-6)
    with pytest.raises(ValueError, match="krum-malicious"):
        CoordinatorConfig.from_run_config({"krum-malicious": -1})


def test_a_trimmed_mean_of_four_hospitals_still_cuts_one_at_each_end():
    assert [trimmed_count(n, 0.2) for n in (2, 3, 4, 5, 10)] == [0, 1, 1, 1, 2]
    assert trimmed_count(4, 0.0) == 0
    honest = [np.full(3, v, np.float32) for v in (0.1, 0.11, 0.12)]
    trimmed = aggregate_updates([*honest, np.full(3, -5.0)], [1] * 4, "trimmed-mean", trim=0.2)
    np.testing.assert_allclose(trimmed, 0.105, rtol=1e-5)  # the middle two
    with pytest.raises(ValueError, match="trim must be"):
        trimmed_count(4, 0.5)


def test_the_guard_knows_what_an_honest_round_can_send():
    bound = update_bound(local_steps=8, lr=0.02, update="sign", dim=72)
    assert reject_reason(np.full(72, 0.16, np.float32), bound) is None  # 8 steps of 0.02
    assert "beyond" in reject_reason(np.full(72, 0.17), bound)
    assert "non-finite" in reject_reason(np.array([0.0, np.inf]), bound)
    assert update_bound(8, 0.02, "raw", 72) == float("inf")


# -- the outbox allow-list ----------------------------------------------------------------------


def _train_reply(**extra) -> RecordDict:
    content = {
        "arrays": ArrayRecord({"update": Array(np.zeros(DIM, np.float32))}),
        "metrics": MetricRecord({"num-examples": 10, "train-loss": 0.5, "fm-queries": 80}),
        "site": ConfigRecord({"name": "hospital-a"}),
    }
    content.update(extra)
    return RecordDict(content)


def test_outbox_accepts_an_update_and_aggregate_metrics():
    check_outgoing(_train_reply(), "train", DIM)
    evaluate = RecordDict({"metrics": MetricRecord({"num-examples": 5, "dice": 0.7})})
    check_outgoing(evaluate, "evaluate", DIM)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"images": ArrayRecord({"x": Array(np.zeros((2, 8, 8, 3), np.uint8))})}, "images"),
        ({"arrays": ArrayRecord({"update": Array(np.zeros(128 * 128 * 3, np.float32))})}, "shape"),
        (
            {
                "arrays": ArrayRecord(
                    {
                        "update": Array(np.zeros(DIM, np.float32)),
                        "masks": Array(np.zeros((2, 8, 8), np.float32)),
                    }
                )
            },
            "only 'update'",
        ),  # fmt: skip
        ({"metrics": MetricRecord({"num-examples": 2, "train-loss": [0.1, 0.9]})}, "one number"),
        ({"metrics": MetricRecord({"num-examples": 2, "fm-logits-mean": 0.3})}, "allow-list"),
        ({"site": ConfigRecord({"name": "a", "points": "12,40"})}, "allow-list"),
        ({"outputs": MetricRecord({"num-examples": 2})}, "outputs"),
    ],
)
def test_outbox_refuses_anything_else(bad, message):
    with pytest.raises(OutboxViolation, match=message):
        check_outgoing(_train_reply(**bad), "train", DIM)


def test_outbox_refuses_arrays_in_evaluate_replies():
    reply = RecordDict(
        {
            "metrics": MetricRecord({"num-examples": 5, "dice": 0.7}),
            "arrays": ArrayRecord({"update": Array(np.zeros(DIM, np.float32))}),
        }
    )
    with pytest.raises(OutboxViolation, match="arrays"):
        check_outgoing(reply, "evaluate", DIM)


# -- the coordinator's rounds, in-process -------------------------------------------------------


@pytest.fixture
def fed_setup(tmp_path, small_sam):
    weights = tmp_path / "fm.pt"
    save_tiny_weights(weights, small_sam, SMALL_ARCH, {})
    sites = [
        {"data": "fundus", "site-name": "a", "n": 16, "seed": 1, "fm": f"tiny:{weights}"},
        {"data": "ultrasound", "site-name": "b", "n": 24, "seed": 2, "fm": f"tiny:{weights}"},
    ]

    def make(rounds: int, out, resume: bool = False, **extra):
        run_config = {
            "rounds": rounds, "min-sites": 1, "local-steps": 2, "batch-size": 2, "sp-avg": 2,
            "out-dir": str(out), "resume": resume, "sites": json.dumps(sites), **extra,
        }  # fmt: skip
        nodes = {11: {"partition-id": 0}, 12: {"partition-id": 1}}
        grid = LoopbackGrid(client_app, nodes, run_config)
        context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                          run_config=run_config)  # fmt: skip
        return grid, context

    return make


def _allowed_only(reply_content: RecordDict) -> None:
    """An independent reading of what DESIGN.md lets leave a site."""
    assert set(reply_content.keys()) <= {"arrays", "metrics", "site"}
    for name, record in reply_content.items():
        if name == "arrays":
            assert list(record.keys()) == ["update"]
            assert tuple(record["update"].shape) == (DIM,)
        elif name == "metrics":
            assert all(isinstance(v, (int, float)) for v in record.values())
        else:
            assert list(record.keys()) == ["name"]


def test_two_rounds_change_the_decoder_and_report_every_site(fed_setup, tmp_path):
    grid, context = fed_setup(2, tmp_path / "run")
    state = run_rounds(grid, context)
    theta0 = initial_theta(FedTrainConfig.from_flat(context.run_config))
    assert state.round == 2 and not np.array_equal(state.theta, theta0)
    for entry in state.history:
        assert set(entry["train"]) == {"a", "b"} and set(entry["evaluate"]) == {"a", "b"}
        assert entry["train"]["b"]["num-examples"] > entry["train"]["a"]["num-examples"]
        assert entry["train"]["a"]["fm-queries"] == 2 * 2 * 2 * 2  # steps x 2K x batch
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| a |" in report and "| weighted |" in report
    # each round's wall time, train fan-out to the end of its evaluate, as every runtime
    # records it (simulations/bench_deployment.py compares the simulation's and deployment's)
    rounds = json.loads((tmp_path / "run" / "rounds.json").read_text())["history"]
    assert [e["round"] for e in rounds] == [1, 2]
    assert all(0 < e["seconds"] < 600 for e in rounds)
    assert all(e["train"][s]["seconds"] < e["seconds"] for e in rounds for s in "ab")
    # the private head trained at each site and stayed there (the update is the shared part)
    for node in (11, 12):
        private = grid.contexts[node].state["site-state"]["private"].numpy()
        assert private.shape == (18,) and np.abs(private).sum() > 0
    # every message a site sent: only what may leave
    assert len(grid.replies) == 8
    for reply in grid.replies:
        assert not reply.has_error()
        _allowed_only(reply.content)


def test_a_site_keeps_its_own_decoder_at_home_when_asked(fed_setup, tmp_path):
    grid, context = fed_setup(2, tmp_path / "run", **{"personal-keep": 0.5})
    state = run_rounds(grid, context)
    for node in (11, 12):
        own = grid.contexts[node].state["site-state"]["personal"].numpy()
        assert own.shape == (DIM,) and not np.array_equal(own, state.theta)
    for reply in grid.replies:  # the own decoder never leaves: same allow-list as ever
        assert not reply.has_error()
        _allowed_only(reply.content)


def test_a_site_past_its_privacy_budget_declines_and_the_others_go_on(
    fed_setup, tmp_path, capsys, caplog
):
    _, context = fed_setup(2, tmp_path / "run")
    sites = json.loads(context.run_config["sites"])
    sites[0]["dp-epsilon-budget"] = 0.01  # site a: too little for even one round
    grid, context = fed_setup(2, tmp_path / "run", dp=True, sites=json.dumps(sites))
    state = run_rounds(grid, context)
    for entry in state.history:
        assert set(entry["train"]) == {"b"}
        assert any("privacy-budget-spent" in f and "declined" in f for f in entry["failures"])
    eps = [entry["train"]["b"]["epsilon"] for entry in state.history]
    assert 0 < eps[0] < eps[1]  # privacy spent grows round by round, reported by the site
    # not privatised: its loss, size, FM images and time stay home
    assert set(state.history[0]["train"]["b"]) == DP_TRAIN_METRICS | {"upload-bytes"}
    report = (tmp_path / "run" / "report.md").read_text()
    assert f"| b | {eps[1]:.2f} | 1e-05 | 2 |" in report
    for reply in grid.replies:
        if not reply.has_error():
            _allowed_only(reply.content)
    # named by its name, in one line with its reason: terminal, report.md and rounds.json
    declined = "train a: privacy-budget-spent: the site declined the round"
    for entry in state.history:
        assert [f for f in entry["failures"] if f.startswith(declined)], entry["failures"]
    failures = [f for e in state.history for f in e["failures"]]
    assert not any(re.search(r"node \d", f) or "\n" in f for f in failures), failures
    assert f"- round 2, {declined}" in report
    rounds = json.loads((tmp_path / "run" / "rounds.json").read_text())["history"]
    assert rounds[1]["failures"] == state.history[1]["failures"]
    out = capsys.readouterr()
    assert f"  round 1, {declined}" in out.out
    # the site's own log: one line with its local cause (no traceback)
    site_lines = [ln for ln in caplog.messages if "privacy-budget-spent" in ln]
    assert site_lines and all("declines round" in ln for ln in site_lines)
    assert "Traceback" not in caplog.text


def test_under_dp_a_site_sends_only_what_the_accountant_covers(fed_setup, tmp_path):
    """A DP site's train reply once carried its training-set size, its FM image count (the sum
    of its secret Poisson batch sizes) and its time: none is covered by the epsilon it books.
    Now it sends its step count and privacy spent, and the coordinator counts each site once."""
    grid, context = fed_setup(1, tmp_path / "run", dp=True)
    state = run_rounds(grid, context)
    updates = {}
    for reply in grid.replies:
        if "arrays" in reply.content:
            assert set(reply.content["metrics"]) == DP_TRAIN_METRICS
            updates[reply.content["site"]["name"]] = reply.content["arrays"]["update"].numpy()
    assert set(updates) == {"a", "b"}  # 16 and 24 cases: weighing by size would differ
    theta0 = initial_theta(FedTrainConfig.from_flat(context.run_config))
    np.testing.assert_allclose(state.theta, theta0 + (updates["a"] + updates["b"]) / 2, atol=1e-6)
    rounds = json.loads((tmp_path / "run" / "rounds.json").read_text())["history"]
    assert set(rounds[0]["train"]["a"]) == DP_TRAIN_METRICS | {"upload-bytes"}
    # and the ServerApp calls it a success (it once read "no training metrics" as "never
    # aggregated" and refused every DP run)
    coordinator_main(*fed_setup(2, tmp_path / "run", dp=True, resume=True))


def test_seed_and_scalar_uploads_give_the_dense_run_bit_for_bit(fed_setup, tmp_path):
    dense = run_rounds(*fed_setup(2, tmp_path / "dense"))
    grid, context = fed_setup(2, tmp_path / "seeds", upload="seeds")
    seeds = run_rounds(grid, context)
    np.testing.assert_array_equal(seeds.theta, dense.theta)
    for reply in grid.replies:
        if "arrays" in reply.content:  # train replies: bytes only, a header and 2 x 2 scalars
            (scalars,) = reply.content["arrays"].values()
            assert scalars.dtype == "uint8" and scalars.shape == (20 + 4 * 2 * 2,)
    for d, s in zip(dense.history, seeds.history, strict=True):
        assert d["train"]["a"]["upload-bytes"] == 4 * DIM > s["train"]["a"]["upload-bytes"]
    # a restarted coordinator replays on from its checkpointed replicas
    more_dense = run_rounds(*fed_setup(3, tmp_path / "dense", resume=True))
    more_seeds = run_rounds(*fed_setup(3, tmp_path / "seeds", resume=True, upload="seeds"))
    np.testing.assert_array_equal(more_seeds.theta, more_dense.theta)
    assert not more_seeds.history[-1]["failures"]


@pytest.mark.parametrize("attack", ["scaled", "nan"])
def test_a_site_sending_impossible_updates_is_rejected_and_named(fed_setup, tmp_path, attack):
    def tamper(reply):
        if "arrays" in reply.content and reply.content["site"]["name"] == "b":
            u = reply.content["arrays"]["update"].numpy()
            bad = u * 100 if attack == "scaled" else np.full_like(u, np.nan)
            reply.content["arrays"] = ArrayRecord({"update": Array(bad)})
        return reply

    grid, context = fed_setup(1, tmp_path / "attacked")
    grid.on_reply = tamper
    attacked = run_rounds(grid, context)
    grid, context = fed_setup(1, tmp_path / "without-b")
    grid.on_deliver = lambda msg: grid.down.add(12) if msg.metadata.message_type == "train" else 0
    without_b = run_rounds(grid, context)
    np.testing.assert_array_equal(attacked.theta, without_b.theta)  # as if b had not answered
    assert any("train b: update rejected" in f for f in attacked.history[0]["failures"])


def test_a_restarted_coordinator_continues_with_the_identical_decoder(fed_setup, tmp_path):
    out = tmp_path / "run"
    run_rounds(*fed_setup(2, out, server_opt="fedavgm"))
    saved = load_checkpoint(out)
    grid, context = fed_setup(3, out, resume=True, server_opt="fedavgm")
    state = run_rounds(grid, context)
    first = grid.sent[0]
    assert first.content["config"]["server-round"] == 3
    np.testing.assert_array_equal(first.content["arrays"]["theta"].numpy(), saved.theta)
    assert [e["round"] for e in state.history] == [1, 2, 3]
    with pytest.raises(ValueError, match="other training settings"):
        run_rounds(*fed_setup(4, out, resume=True, server_opt="fedavgm", lr=0.5))


def test_a_silent_site_is_skipped_and_the_run_goes_on(fed_setup, tmp_path):
    grid, context = fed_setup(2, tmp_path / "run")
    grid.on_deliver = lambda msg: (
        grid.down.add(12) if msg.content["config"]["server-round"] == 2 else None
    )
    state = run_rounds(grid, context)
    assert state.round == 2
    assert set(state.history[1]["train"]) == {"a"}
    assert any("no reply" in f for f in state.history[1]["failures"])
    assert "Sites that failed" in (tmp_path / "run" / "report.md").read_text()


def test_failures_name_the_site_even_when_flower_reports_them(fed_setup, tmp_path):
    """An error reply made by the SuperLink (a site gone offline) comes from node 1, not from
    the site: it is named by the node its message went to, under the name that site gave."""
    from flwr.app import Error, Message
    from flwr.common.constant import ErrorCode

    grid, context = fed_setup(2, tmp_path / "run")

    def offline_in_round_2(reply):
        if reply.metadata.src_node_id == 12 and reply.metadata.message_type == "train":
            sent = next(
                m for m in grid.sent if m.metadata.message_id == reply.metadata.reply_to_message_id
            )
            if sent.content["config"]["server-round"] == 2:
                reply = Message(Error(ErrorCode.NODE_UNAVAILABLE, "Error: Node Unavailable"),
                                reply_to=sent)  # fmt: skip
                reply.metadata.__dict__["_src_node_id"] = 1  # as the SuperLink sends it
        return reply

    grid.on_reply = offline_in_round_2
    state = run_rounds(grid, context)
    assert state.history[1]["failures"] == [
        "train b: flower-error-5: the site went offline before it replied (its SuperNode "
        "stopped answering)"
    ]  # once, by name: no "node 1", no "no reply" for the same site


def test_a_run_no_site_can_join_is_refused_after_one_exchange(tmp_path):
    """SuperNodes without data (a node config naming none): one line, at once, not rounds of
    failures; nothing is checkpointed."""
    out = tmp_path / "run"
    run_config = {"rounds": 5, "min-sites": 1, "out-dir": str(out)}
    nodes = {11: {"site-name": "hospital-a"}, 12: {}}
    grid = LoopbackGrid(client_app, nodes, run_config)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                      run_config=run_config)  # fmt: skip
    with pytest.raises(RunRefused) as refused:
        run_rounds(grid, context)
    message = str(refused.value)
    assert message.startswith("refused the run: no site could take part in round 1: ")
    assert "train hospital-a: configuration: " in message
    assert "train unnamed site (Flower node 12): configuration: " in message
    assert "\n" not in message
    assert len(grid.sent) == 2  # one train message per node, then nothing
    assert not (out / "checkpoint.npz").exists() and not (out / "report.md").exists()


# -- the audit log ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {"upload": "dense"},
        {"upload": "seeds"},
        # the coordinator's consensus trajectory must survive the restart too
        {"upload": "seeds", "shared-perturbations": True, "aggregation": "scalar-median"},
    ],
    ids=["dense", "seeds", "seeds-scalar-median"],
)
def test_audit_verifies_a_run_and_fails_on_a_tampered_log(fed_setup, tmp_path, settings):
    out = tmp_path / "run"
    run_rounds(*fed_setup(2, out, **settings))
    run_rounds(*fed_setup(3, out, resume=True, **settings))  # a restart, logged on
    assert main(["audit", str(out)]) == 0
    log = out / "audit.jsonl"
    lines = log.read_text().splitlines()
    assert len(lines) == 3
    entry = json.loads(lines[1])
    array = next(iter(entry["uploads"][0]["arrays"].values()))
    raw = bytearray(base64.b64decode(array["b64"]))
    raw[-1] ^= 0x01  # one flipped bit in one site's round-2 upload
    array["b64"] = base64.b64encode(bytes(raw)).decode()
    forged = [lines[0], json.dumps(entry), lines[2]]
    log.write_text("\n".join(forged) + "\n")
    assert not audit_run(out).ok  # the replay differs, or the chain breaks at round 3
    third = json.loads(forged[2])  # a forger who also mends the chain: the checkpoint's
    third["prev_sha256"] = hashlib.sha256(forged[1].encode()).hexdigest()  # head differs
    log.write_text("\n".join([*forged[:2], json.dumps(third)]) + "\n")
    result = audit_run(out)
    # a flipped low bit may leave round 2's sign steps as they were and show only in the
    # momentum of round 3: caught either way
    assert not result.ok
    assert any(where in result.message for where in ("round 2", "round 3", "last hash"))
    assert main(["audit", str(out)]) == 1


# -- Flower's central DP wrappers (upload = "model") --------------------------------------------


def test_model_uploads_give_the_dense_run(fed_setup, tmp_path):
    dense = run_rounds(*fed_setup(1, tmp_path / "dense"))
    grid, context = fed_setup(1, tmp_path / "model", upload="model")
    model = run_rounds(grid, context)
    np.testing.assert_allclose(model.theta, dense.theta, atol=1e-6)  # theta + u - theta rounds
    train = [r for r in grid.replies if "arrays" in r.content]
    assert train and all(list(r.content["arrays"].keys()) == ["theta"] for r in train)


def _train_thetas(grid: LoopbackGrid) -> list[np.ndarray]:
    """The global decoder each train round was sent (once per round: two sites)."""
    sent = [m for m in grid.sent if m.metadata.message_type == "train"]
    return [m.content["arrays"]["theta"].numpy() for m in sent][::2]


@pytest.mark.parametrize("mode", ["server-clipping", "client-clipping"])
def test_flowers_central_dp_clips_each_site(fed_setup, tmp_path, mode):
    clip = 0.05  # an honest 2-step round moves ~0.34: every site is clipped
    settings = {"upload": "model", "central-dp": mode, "central-dp-clip": clip}
    grid, context = fed_setup(1, tmp_path / "run", **settings, **{"central-dp-noise": 0.0})
    state = run_rounds(grid, context)
    (start,) = _train_thetas(grid)
    assert 0 < np.linalg.norm(state.theta - start) <= clip * (1 + 1e-5)  # equal mean of clipped
    if mode == "client-clipping":  # clipped at the site, by Flower's fixedclipping_mod
        train = [r for r in grid.replies if "arrays" in r.content]
        assert len(train) == 2
        for reply in train:
            moved = reply.content["arrays"]["theta"].numpy() - start
            assert np.linalg.norm(moved) <= clip * (1 + 1e-5)


def test_flowers_central_dp_noises_the_mean_and_accounts_for_it(fed_setup, tmp_path):
    settings = {"upload": "model", "central-dp": "server-clipping", "central-dp-clip": 0.05}
    clipped = run_rounds(
        *fed_setup(1, tmp_path / "clipped", **settings, **{"central-dp-noise": 0.0})
    )
    grid, context = fed_setup(2, tmp_path / "noised", **settings)
    noised = run_rounds(grid, context)
    after_round_1 = _train_thetas(grid)[1]
    assert np.linalg.norm(after_round_1 - clipped.theta) > 0.05  # noise sigma C per coordinate
    eps = [e["aggregate"]["central-dp-epsilon"] for e in noised.history]
    assert 0 < eps[0] < eps[1] < np.inf
    report = (tmp_path / "noised" / "report.md").read_text()
    assert f"epsilon {eps[1]:.2f} at delta 1e-05 per hospital after 2 noised rounds" in report
    result = audit_run(tmp_path / "noised")
    assert not result.ok and "secret Gaussian noise" in result.message


def test_central_dp_refuses_settings_that_void_its_guarantee(fed_setup, tmp_path):
    with pytest.raises(ValueError, match='upload = "model"'):
        run_rounds(*fed_setup(1, tmp_path / "a", **{"central-dp": "server-clipping"}))
    with pytest.raises(ValueError, match="server-lr = 1"):
        run_rounds(
            *fed_setup(
                1, tmp_path / "b", upload="model", **{"central-dp": "server-clipping"},
                **{"server-lr": 2.0},
            )
        )  # fmt: skip
    with pytest.raises(ValueError, match="central-dp must be"):
        CoordinatorConfig.from_run_config({"central-dp": "on"})
