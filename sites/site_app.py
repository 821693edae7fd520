"""The site's ClientApp itself: its data, FM and SPSA rounds (``sites/app.py`` decides where
it runs: in the Flower process of each message, or in ``baps-fed site``'s long-lived process).

Site settings come from the SuperNode's node config (``data``, ``site-name``, ``fm``, ``n``,
``seed``, ``scanner``, ``layout``); in Flower's simulation runtime, where a node config holds
only ``partition-id``, the run config's ``sites`` (a JSON list of the same fields) names the
site of each partition, and when it is empty (the pyproject's default: ``flwr run .``) each
partition is a site of the default scenario. Run settings (local steps, SPSA, decoder) come
from the run config.
The site's SPSA state, private head and own decoder (``personal-keep``) live in
``context.state`` and carry across rounds; none of them is ever sent.
"""

from __future__ import annotations

import logging
from pathlib import Path

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

from baps_fed.data.sample import SegmentationDataset
from baps_fed.data.sources import open_source
from baps_fed.federation.contract import FedTrainConfig, SiteSpec, spec_from_flat
from baps_fed.federation.local_site import LocalSite, site_splits
from baps_fed.federation.run_config import SITES_KEY, check_run_config
from baps_fed.federation.scenario import partition_site
from baps_fed.federation.site_state import (
    RUN_KEY,
    SiteState,
    SiteStateStore,
)
from baps_fed.federation.uploads import UploadShape, encode_upload, upload_shape
from baps_fed.fm.contract import BlackboxFM
from baps_fed.fm.spec import load_fm
from sites.outbox import outbox_guard

logger = logging.getLogger(__name__)

STATE = "site-state"  # the context.state record of SiteState.to_arrays()
# built once per process: a site per run settings, its FM and decoded data shared by them
_SITES: dict[tuple[SiteSpec, FedTrainConfig], LocalSite] = {}
_FMS: dict[str, BlackboxFM] = {}
_DATA: dict[tuple, SegmentationDataset] = {}


def site_spec(context: Context) -> SiteSpec:
    node = dict(context.node_config)
    if "data" in node:
        return spec_from_flat(node, default_name=f"node-{context.node_id}")
    if "partition-id" not in node:
        raise ValueError("the node config names no data: pass --node-config 'data=\"/path\"'")
    pid = int(node["partition-id"])
    partitions = int(node.get("num-partitions", pid + 1))
    site = partition_site(str(context.run_config.get(SITES_KEY, "[]")), pid, partitions)
    return spec_from_flat(site, f"site{pid}", where=f"the run config's site {pid}")


def declared_name(context: Context) -> str | None:
    """The site's name for its error replies, even when its settings are invalid (None: it
    has none yet)."""
    try:
        return site_spec(context).name
    except Exception:
        name = context.node_config.get("site-name")
        return str(name) if name is not None else None


def local_site(context: Context) -> LocalSite:
    check_run_config(context.run_config)
    spec, cfg = site_spec(context), FedTrainConfig.from_flat(context.run_config)
    if (spec, cfg) not in _SITES:
        _SITES[(spec, cfg)] = build_site(spec, cfg)
    return _SITES[(spec, cfg)]


def build_site(spec: SiteSpec, cfg: FedTrainConfig) -> LocalSite:
    """A site for this run, from the FM and the decoded data this process already holds (a
    long-lived site process loads its FM and decodes its data once, whatever the runs)."""
    fm, data = _fm_and_data(spec, cfg.decoder_config().image_size)
    return LocalSite(spec, cfg, fm=fm, data=data)


def _fm_and_data(spec: SiteSpec, size: int) -> tuple[BlackboxFM, SegmentationDataset]:
    if spec.fm not in _FMS:
        _FMS[spec.fm] = load_fm(spec.fm)
    data_key = (spec.data, spec.n, spec.seed, spec.scanner, spec.layout, size)
    if data_key not in _DATA:
        _DATA[data_key] = open_source(
            spec.data, n=spec.n, seed=spec.seed, scanner=spec.scanner, layout=spec.layout,
            size=size,
        )  # fmt: skip
    return _FMS[spec.fm], _DATA[data_key]


def warm_up(node_config: dict) -> tuple[SiteSpec, int]:
    """Before any run: load the FM and decode and check the data at the default image size (a
    bad path fails here, at the site's terminal, not in round 1); the run's own settings, its
    prompt kind among them, are checked when its first message comes. Returns the site's spec
    and its number of cases."""
    spec = spec_from_flat(node_config, default_name="site", where="this site's settings")
    _, data = _fm_and_data(spec, FedTrainConfig().decoder_config().image_size)
    splits = site_splits(spec, data)  # a bad subset or group-by fails here too
    return spec, sum(len(part) for part in splits.values())


def _upload(context: Context) -> UploadShape:
    """What this run's train replies carry (the outbox checks it exactly)."""
    site = local_site(context)
    return upload_shape(site.cfg, site.decoder.num_params)


def _store(site: LocalSite, msg: Message) -> SiteStateStore | None:
    """This run's states on the site's disk (None: the site keeps its state in memory only)."""
    run_key = msg.content["config"].get(RUN_KEY)
    if not site.spec.state_dir or run_key is None:
        return None
    return SiteStateStore(Path(site.spec.state_dir), str(run_key))


def _load_state(context: Context, store: SiteStateStore | None, server_round: int, train: bool):
    """The state of this process's last round, else the one on disk (a restarted site)."""
    if STATE in context.state:
        return SiteState.from_arrays({k: a.numpy() for k, a in context.state[STATE].items()})
    if store is None:
        return SiteState()
    return store.before(server_round) if train else store.after(server_round)


def _save_state(
    context: Context, state: SiteState, store: SiteStateStore | None, server_round: int
) -> None:
    context.state[STATE] = ArrayRecord({k: Array(v) for k, v in state.to_arrays().items()})
    if store is not None:
        store.save(server_round, state)


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
site_app = ClientApp(mods=[outbox_guard(_upload, declared_name), clipping_when_asked])


@site_app.train()
def train(msg: Message, context: Context) -> Message:
    site = local_site(context)
    server_round = int(msg.content["config"]["server-round"])
    theta = _theta(msg)
    store = _store(site, msg)
    result = site.train_from(theta, server_round, _load_state(context, store, server_round, True))
    _save_state(context, SiteState.after(result), store, server_round)  # stays here, never sent
    logger.info("site %s round %d: %s", site.spec.name, server_round, result.home)
    arrays = encode_upload(site.cfg.upload, theta, result)
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "metrics": MetricRecord(result.metrics),
            "site": ConfigRecord({"name": site.spec.name}),
        }
    )
    return Message(content=content, reply_to=msg)


@site_app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    site = local_site(context)
    server_round = int(msg.content["config"]["server-round"])
    state = _load_state(context, _store(site, msg), server_round, train=False)
    metrics = site.evaluate_from(_theta(msg), state)
    content = RecordDict(
        {"metrics": MetricRecord(metrics), "site": ConfigRecord({"name": site.spec.name})}
    )
    return Message(content=content, reply_to=msg)
