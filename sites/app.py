"""The site ClientApp.

Site settings come from the SuperNode's node config (``data``, ``site-name``, ``fm``, ``n``,
``seed``, ``scanner``, ``layout``); in Flower's simulation runtime, where a node config holds
only ``partition-id``, the run config's ``sites`` (a JSON list of the same fields) names the
site of each partition. Run settings (local steps, SPSA, decoder) come from the run config.
The site's SPSA state, private head and own decoder (``personal-keep``) live in
``context.state`` and carry across rounds; none of them is ever sent.
"""

from __future__ import annotations

import json
import logging

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from baps_fed.codec import pack_scalars, scalar_bytes
from baps_fed.site_training import FedTrainConfig, LocalSite, SiteSpec, spec_from_flat
from baps_fed.zoo import SpsaState
from sites.outbox import Upload, dense, model, outbox_guard, seed_scalars

logger = logging.getLogger(__name__)

_SITES: dict[tuple[SiteSpec, FedTrainConfig], LocalSite] = {}  # built once per process


def site_spec(context: Context) -> SiteSpec:
    node = dict(context.node_config)
    if "data" in node:
        return spec_from_flat(node, default_name=f"node-{context.node_id}")
    if "partition-id" not in node:
        raise ValueError("the node config names no data: pass --node-config 'data=\"/path\"'")
    sites = json.loads(str(context.run_config.get("sites", "[]")))
    pid = int(node["partition-id"])
    if not 0 <= pid < len(sites):
        raise ValueError(
            f"simulation partition {pid} has no site: the run config's 'sites' lists "
            f"{len(sites)}; run as many supernodes as sites"
        )
    return spec_from_flat(sites[pid], default_name=f"site{pid}")


def local_site(context: Context) -> LocalSite:
    spec, cfg = site_spec(context), FedTrainConfig.from_flat(dict(context.run_config))
    if (spec, cfg) not in _SITES:
        _SITES[(spec, cfg)] = LocalSite(spec, cfg)
    return _SITES[(spec, cfg)]


def _upload(context: Context) -> Upload:
    """What this run's train replies carry: the dense update or its seed-and-scalar bytes."""
    site = local_site(context)
    if site.cfg.upload == "seeds":
        return seed_scalars(scalar_bytes(site.cfg.local_steps, site.cfg.sp_avg))
    if site.cfg.upload == "model":
        return model(site.decoder.num_params)
    return dense(site.decoder.num_params)


def _load_state(context: Context) -> SpsaState | None:
    if "spsa" not in context.state:
        return None
    d = dict(context.state["spsa"])
    if "spsa-momentum" in context.state:
        d["momentum"] = context.state["spsa-momentum"]["m"].numpy()
    return SpsaState.from_dict(d)


def _save_state(context: Context, state: SpsaState) -> None:
    d = state.to_dict()
    momentum = d.pop("momentum", None)
    context.state["spsa"] = ConfigRecord(d)
    if momentum is not None:
        context.state["spsa-momentum"] = ArrayRecord({"m": Array(momentum)})


def _load_array(context: Context, name: str) -> np.ndarray | None:
    if name not in context.state:
        return None
    return context.state[name]["w"].numpy()


def _save_array(context: Context, name: str, value: np.ndarray) -> None:
    context.state[name] = ArrayRecord({"w": Array(value)})


def _load_privacy(context: Context) -> list[tuple[float, float, int]] | None:
    """The accountant's (noise multiplier, sample rate, steps) entries of earlier rounds."""
    rows = _load_array(context, "privacy-history")
    return None if rows is None else [(s, q, int(n)) for s, q, n in rows]


def _theta(msg: Message) -> np.ndarray:
    return msg.content["arrays"]["theta"].numpy()


def clipping_when_asked(msg: Message, context: Context, call_next) -> Message:
    """Flower's fixedclipping_mod on train messages that carry a clipping norm (a coordinator
    with central-dp = client-clipping); every other message passes untouched."""
    if msg.metadata.message_type == MessageType.TRAIN:
        config = msg.content.get("config")
        if config is not None and KEY_CLIPPING_NORM in config:
            return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


# the outbox guard is outermost: it checks the reply as it finally leaves
app = ClientApp(mods=[outbox_guard(_upload), clipping_when_asked])


@app.train()
def train(msg: Message, context: Context) -> Message:
    site = local_site(context)
    server_round = int(msg.content["config"]["server-round"])
    result = site.train_round(
        _theta(msg),
        server_round,
        _load_state(context),
        _load_array(context, "private-head"),
        _load_array(context, "personal-decoder"),
        _load_privacy(context),
    )
    # the optimiser state, private head and own decoder stay here
    _save_state(context, result.state)
    _save_array(context, "private-head", result.private)
    _save_array(context, "personal-decoder", result.personal)
    _save_array(context, "privacy-history", np.array(result.privacy, np.float64).reshape(-1, 3))
    logger.info("site %s round %d: %s", site.spec.name, server_round, result.metrics)
    if site.cfg.upload == "seeds":  # a few bytes: the coordinator replays the round
        blob = np.frombuffer(pack_scalars(result.c, result.scalars), np.uint8)
        arrays = ArrayRecord({"scalars": Array(blob)})
    elif site.cfg.upload == "model":  # Flower's usual reply, which its DP wrappers clip
        arrays = ArrayRecord({"theta": Array((_theta(msg) + result.update).astype(np.float32))})
    else:
        arrays = ArrayRecord({"update": Array(result.update)})
    content = RecordDict(
        {
            "arrays": arrays,
            "metrics": MetricRecord(result.metrics),
            "site": ConfigRecord({"name": site.spec.name}),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    site = local_site(context)
    metrics = site.evaluate(
        _theta(msg),
        _load_array(context, "private-head"),
        personal=_load_array(context, "personal-decoder"),
    )
    content = RecordDict(
        {"metrics": MetricRecord(metrics), "site": ConfigRecord({"name": site.spec.name})}
    )
    return Message(content=content, reply_to=msg)
