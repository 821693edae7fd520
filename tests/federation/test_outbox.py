"""The outbox allow-list against the upload registry: for every upload kind, the honest reply
``encode_upload`` makes leaves the site, and anything that could carry more does not.
(tests/federation/test_flower_apps.py covers a dense reply with image/mask arrays, a list
train-loss, an unknown metric, an extra site field and an unknown record.)"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from baps_fed.federation.contract import FedTrainConfig, RoundResult
from baps_fed.federation.seed_upload import pack_scalars, scalar_bytes
from baps_fed.federation.uploads import UploadShape, encode_upload, upload_shape
from baps_fed.method.spsa import SpsaState
from sites.outbox import MAX_NAME, OutboxViolation, check_outgoing

N_PARAMS = 12
STEPS, K = 3, 2
KINDS = ["dense", "seeds", "model"]
NAMES = {"dense": "update", "seeds": "scalars", "model": "theta"}


def _cfg(kind: str) -> FedTrainConfig:
    return FedTrainConfig(upload=kind, local_steps=STEPS, sp_avg=K)


def _result(steps: int = STEPS) -> RoundResult:
    rng = np.random.default_rng(0)
    return RoundResult(
        update=rng.choice([-0.06, 0.0, 0.06], N_PARAMS).astype(np.float32),
        state=SpsaState(),
        metrics={"num-examples": 8},
        private=np.zeros(0, np.float32),
        personal=np.zeros(N_PARAMS, np.float32),
        privacy=[],
        scalars=rng.normal(size=(steps, K)).astype(np.float32),
        c=0.1,
    )


def _arrays(kind: str, steps: int = STEPS) -> dict[str, np.ndarray]:
    theta = np.linspace(-1, 1, N_PARAMS, dtype=np.float32)
    return encode_upload(kind, theta, _result(steps))


def _reply(arrays: dict[str, np.ndarray] | None = None, **records) -> RecordDict:
    content = {
        "metrics": MetricRecord({"num-examples": 8, "train-loss": 0.4, "spsa-step": 3}),
        "site": ConfigRecord({"name": "hospital-a"}),
    }
    if arrays is not None:
        content["arrays"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    content.update(records)
    return RecordDict(content)


def _shape(kind: str) -> UploadShape:
    return upload_shape(_cfg(kind), N_PARAMS)


# -- the registry ------------------------------------------------------------------------------


def test_upload_shapes_of_every_kind():
    assert _shape("dense") == UploadShape("update", N_PARAMS, "float32")
    assert _shape("model") == UploadShape("theta", N_PARAMS, "float32")
    # header (4 + 4 x 2 + 8 bytes) plus STEPS x K float32
    assert _shape("seeds") == UploadShape("scalars", 20 + 4 * STEPS * K, "uint8")
    assert scalar_bytes(STEPS, K) == 20 + 4 * STEPS * K


def test_encode_upload_of_every_kind():
    theta = np.linspace(-1, 1, N_PARAMS, dtype=np.float32)
    result = _result()
    np.testing.assert_array_equal(encode_upload("dense", theta, result)["update"], result.update)
    model = encode_upload("model", theta, result)["theta"]
    assert model.dtype == np.float32
    np.testing.assert_allclose(model, theta + result.update)
    seeds = encode_upload("seeds", theta, result)["scalars"]
    assert seeds.tobytes() == pack_scalars(result.c, result.scalars)
    with pytest.raises(ValueError, match="upload must be one of"):
        encode_upload("gradients", theta, result)


# -- honest replies -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_an_honest_reply_of_every_kind_leaves(kind):
    arrays = _arrays(kind)
    assert set(arrays) == {NAMES[kind]}
    check_outgoing(_reply(arrays), "train", _shape(kind))
    check_outgoing(_reply(arrays, site=ConfigRecord({})), "train", _shape(kind))
    check_outgoing(RecordDict({"metrics": MetricRecord({}), "arrays": _reply(arrays)["arrays"]}),
                   "train", _shape(kind))  # fmt: skip


def test_an_evaluate_reply_with_every_allowed_metric_leaves():
    metrics = {
        "num-examples": 5, "dice": 0.7, "iou": 0.6, "hd95": 4.5, "global-dice": 0.65,
        "zero-shot-dice": 0.5, "zero-shot-iou": 0.4, "zero-shot-hd95": 9.0, "fm-queries": 40,
    }  # fmt: skip
    reply = RecordDict({"metrics": MetricRecord(metrics), "site": ConfigRecord({"name": "b"})})
    check_outgoing(reply, "evaluate", _shape("dense"))


def test_a_site_name_of_the_length_limit_leaves():
    reply = _reply(_arrays("dense"), site=ConfigRecord({"name": "x" * MAX_NAME}))
    check_outgoing(reply, "train", _shape("dense"))


# -- refused: the arrays --------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_an_extra_array_is_refused(kind):
    arrays = {**_arrays(kind), "extra": np.zeros(4, np.float32)}
    with pytest.raises(OutboxViolation, match=f"only '{NAMES[kind]}'"):
        check_outgoing(_reply(arrays), "train", _shape(kind))


@pytest.mark.parametrize("kind", KINDS)
def test_the_right_array_under_another_name_is_refused(kind):
    (array,) = _arrays(kind).values()
    with pytest.raises(OutboxViolation, match=f"only '{NAMES[kind]}'"):
        check_outgoing(_reply({"upload": array}), "train", _shape(kind))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("delta", [-1, 1])
def test_an_array_of_another_length_is_refused(kind, delta):
    (array,) = _arrays(kind).values()
    longer = np.resize(array, array.size + delta)
    with pytest.raises(OutboxViolation, match="shape"):
        check_outgoing(_reply({NAMES[kind]: longer}), "train", _shape(kind))


def test_seed_scalars_of_another_step_count_are_refused():
    with pytest.raises(OutboxViolation, match="shape"):
        check_outgoing(_reply(_arrays("seeds", steps=STEPS + 1)), "train", _shape("seeds"))


@pytest.mark.parametrize(
    "kind, dtype",
    [("dense", np.float64), ("dense", np.float16), ("model", np.float64), ("seeds", np.int8)],
)
def test_an_array_of_another_dtype_is_refused(kind, dtype):
    (array,) = _arrays(kind).values()
    with pytest.raises(OutboxViolation, match="this run's is"):
        check_outgoing(_reply({NAMES[kind]: array.astype(dtype)}), "train", _shape(kind))


def test_seed_bytes_sent_as_float32_of_the_same_length_are_refused():
    (array,) = _arrays("seeds").values()
    with pytest.raises(OutboxViolation, match="uint8"):
        check_outgoing(_reply({"scalars": array.astype(np.float32)}), "train", _shape("seeds"))


@pytest.mark.parametrize("kind", KINDS)
def test_an_image_shaped_array_of_the_right_size_and_dtype_is_refused(kind):
    shape = _shape(kind)
    # the run's element count and dtype, as a 2-D image: only the 1-D form may leave
    assert shape.size % 4 == 0
    image = np.zeros((4, shape.size // 4), shape.dtype)
    with pytest.raises(OutboxViolation, match="shape"):
        check_outgoing(_reply({shape.name: image}), "train", shape)
    with pytest.raises(OutboxViolation, match="shape"):
        rgb = np.zeros((8, 8, 3), shape.dtype)
        check_outgoing(_reply({shape.name: rgb}), "train", shape)


def test_a_dense_update_is_refused_where_the_run_uploads_seeds():
    with pytest.raises(OutboxViolation, match="only 'scalars'"):
        check_outgoing(_reply(_arrays("dense")), "train", _shape("seeds"))


def test_a_train_reply_without_its_upload_or_with_an_empty_one_is_refused():
    with pytest.raises(OutboxViolation, match="without its update"):
        check_outgoing(_reply(), "train", _shape("dense"))
    with pytest.raises(OutboxViolation, match="only 'update'"):
        check_outgoing(_reply({}), "train", _shape("dense"))


@pytest.mark.parametrize("kind", KINDS)
def test_an_evaluate_reply_with_any_upload_is_refused(kind):
    reply = _reply(_arrays(kind))
    reply["metrics"] = MetricRecord({"num-examples": 5, "dice": 0.7})
    with pytest.raises(OutboxViolation, match="record 'arrays'"):
        check_outgoing(reply, "evaluate", _shape(kind))


def test_a_dp_train_reply_with_its_step_and_privacy_spent_passes():
    reply = _reply(_arrays("dense"))
    reply["metrics"] = MetricRecord({"spsa-step": 4, "epsilon": 0.5, "delta": 1e-5})
    check_outgoing(reply, "train", _shape("dense"))


def test_a_dp_runs_train_reply_is_held_to_it_even_without_epsilon():
    reply = _reply(_arrays("dense"))
    reply["metrics"] = MetricRecord({"spsa-step": 4, "num-examples": 20})
    check_outgoing(reply, "train", _shape("dense"))  # not a DP run: the usual allow-list
    dp_run = replace(_shape("dense"), dp=True)
    with pytest.raises(OutboxViolation, match="num-examples would reveal"):
        check_outgoing(reply, "train", dp_run)


# -- refused: metrics, site, records, message types --------------------------------------------


@pytest.mark.parametrize(
    "kind, metrics, message",
    [
        # an evaluate-only metric in a train reply, and the reverse
        ("train", {"num-examples": 2, "dice": 0.7}, "'dice' is not on the allow-list"),
        ("evaluate", {"num-examples": 2, "spsa-step": 4}, "'spsa-step' is not on"),
        ("evaluate", {"num-examples": 2, "train-loss": 0.3}, "'train-loss' is not on"),
        ("train", {"num-examples": 2, "per-image-dice-0": 0.9}, "not on the allow-list"),
        # lists could carry per-image values
        ("evaluate", {"num-examples": 5, "dice": [0.7, 0.1, 0.9]}, "one number"),
        ("train", {"num-examples": [4, 4], "train-loss": 0.3}, "one number"),
        ("train", {"num-examples": 2, "epsilon": [0.5, 1.5]}, "one number"),
        # a DP reply (it books epsilon): nothing its accountant does not cover
        ("train", {"spsa-step": 4, "epsilon": 0.5, "fm-queries": 36}, "fm-queries would"),
        ("train", {"spsa-step": 4, "epsilon": 0.5, "num-examples": 20}, "reveal the site's"),
        ("train", {"spsa-step": 4, "epsilon": 0.5, "seconds": 1.5}, "secret batches"),
    ],
)
def test_metrics_off_the_allow_list_or_not_one_number_are_refused(kind, metrics, message):
    arrays = _arrays("dense") if kind == "train" else None
    reply = _reply(arrays)
    reply["metrics"] = MetricRecord(metrics)
    with pytest.raises(OutboxViolation, match=message):
        check_outgoing(reply, kind, _shape("dense"))


@pytest.mark.parametrize(
    "records, message",
    [
        ({"metrics": ConfigRecord({"num-examples": 2})}, "record 'metrics' \\(ConfigRecord\\)"),
        ({"site": MetricRecord({"num-examples": 2})}, "record 'site' \\(MetricRecord\\)"),
        ({"site": ArrayRecord({"name": Array(np.zeros(3, np.float32))})}, "record 'site'"),
        ({"config": ConfigRecord({"lr": 0.1})}, "record 'config'"),
        ({"fm-outputs": ArrayRecord({"logits": Array(np.zeros(8, np.float32))})}, "fm-outputs"),
    ],
)
def test_records_of_an_unknown_name_or_type_are_refused(records, message):
    with pytest.raises(OutboxViolation, match=message):
        check_outgoing(_reply(_arrays("seeds"), **records), "train", _shape("seeds"))


def test_arrays_of_the_wrong_record_type_are_refused():
    reply = _reply()
    reply["arrays"] = ConfigRecord({"update": b"\x00" * 48})
    with pytest.raises(OutboxViolation, match="record 'arrays' \\(ConfigRecord\\)"):
        check_outgoing(reply, "train", _shape("dense"))


@pytest.mark.parametrize("kind", ["train", "evaluate"])
def test_a_reply_without_metrics_is_refused(kind):
    reply = _reply(_arrays("dense") if kind == "train" else None)
    del reply["metrics"]
    with pytest.raises(OutboxViolation, match="without its metrics"):
        check_outgoing(reply, kind, _shape("dense"))


@pytest.mark.parametrize("kind", ["train", "evaluate"])
def test_a_site_name_over_the_length_limit_is_refused(kind):
    reply = _reply(
        _arrays("dense") if kind == "train" else None,
        site=ConfigRecord({"name": "x" * (MAX_NAME + 1)}),
    )
    if kind == "evaluate":
        reply["metrics"] = MetricRecord({"num-examples": 5, "dice": 0.7})
    with pytest.raises(OutboxViolation, match=f"<= {MAX_NAME} characters"):
        check_outgoing(reply, kind, _shape("dense"))


@pytest.mark.parametrize("name", [17, 0.5, b"hospital", ["a", "b"]])
def test_a_site_name_that_is_not_a_string_is_refused(name):
    reply = _reply(_arrays("model"), site=ConfigRecord({"name": name}))
    with pytest.raises(OutboxViolation, match="must be a string"):
        check_outgoing(reply, "train", _shape("model"))


@pytest.mark.parametrize("message_type", ["query", "system", "reconnect"])
def test_replies_of_other_message_types_are_refused(message_type):
    with pytest.raises(OutboxViolation, match="sites send no"):
        check_outgoing(_reply(_arrays("dense")), message_type, _shape("dense"))


def test_a_train_subtype_is_checked_as_train():
    check_outgoing(_reply(_arrays("dense")), "train.custom", _shape("dense"))
    with pytest.raises(OutboxViolation, match="only 'update'"):
        arrays = {**_arrays("dense"), "mask": np.zeros(4, np.float32)}
        check_outgoing(_reply(arrays), "train.custom", _shape("dense"))
