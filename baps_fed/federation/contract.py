"""The federation's contract: what every site of a run shares, and what one site round returns.

``FedTrainConfig`` is the run config every site trains with; ``SiteSpec`` is one hospital's node
config, its box habit among it (``site_prompt_config``); perturbations are named by (master
seed, round, site id, step), so any machine can replay them (``perturbation_key``). A round
starts from ``start_point``: the global decoder, or with ``personal_keep`` > 0 a mix of it and
the site's own decoder of the last round.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from baps_fed.data.boxes import BoxConfig, parse_box_bias
from baps_fed.data.manifest import Subset
from baps_fed.data.prompts import POINT, PromptConfig
from baps_fed.federation.uploads import UPLOAD_KINDS
from baps_fed.flat_config import check_keys, flat_keys, require_positive, values_from_flat
from baps_fed.method.ip_decoder import DecoderConfig, build_decoder
from baps_fed.method.perturbations import SeedKey
from baps_fed.method.private_head import PRIVATE_HEADS
from baps_fed.method.spsa import SpsaConfig, SpsaState
from baps_fed.method.spsa_step import TARGET_GREY, StepConfig


@dataclass(frozen=True)
class SiteSpec:
    """Where a site's data and FM come from (a hospital's node config)."""

    name: str
    data: str  # a synthetic modality name or a data folder
    n: int = 200  # synthetic cases (ignored for folders)
    seed: int = 0  # synthetic data seed
    scanner: int = 0  # synthetic acquisition profile
    layout: str = "auto"
    # part of a data folder, by its manifest.csv: "sequence=1,2,3", "quality=good;sequence=1,2"
    # (baps_fed/data/manifest.py); "" uses every sample
    subset: str = ""
    # a manifest column whose groups (one patient's or one video's frames) the site's splits
    # keep whole, e.g. "sequence"; "" splits sample by sample
    group_by: str = ""
    fm: str = "tiny"
    # the site's own privacy policy (used when the run has dp on): total epsilon it will
    # spend over the run, at its delta
    dp_epsilon_budget: float = math.inf
    dp_delta: float = 1e-5
    # where the site keeps its state between rounds, one file per run ("": in memory only,
    # as in a simulation); `baps-fed site` sets it to its --out folder's state/
    state_dir: str = ""
    # how this hospital's clinicians draw loose boxes, in place of the run's (None: the run's
    # box-margin / box-jitter), plus a per-side bias "left,top,right,bottom" (fractions of the
    # box's size, + = outwards; "": none). Node config: it never leaves the site
    box_margin: float | None = None
    box_jitter: float | None = None
    box_bias: str = ""

    def __post_init__(self) -> None:
        require_positive(self, "n")
        Subset.parse(self.subset)  # a malformed subset fails with the config, not at the data
        try:  # a bad margin, jitter or bias fails here too, naming the site
            self.box_config(BoxConfig())
        except ValueError as err:
            raise ValueError(f"site {self.name!r}: box habit: {err}") from None

    def habit_keys(self) -> list[str]:
        """The node-config keys of the box habit this site sets ([]: it draws as the run says)."""
        return [k.replace("_", "-") for k in HABIT_FIELDS if getattr(self, k) not in (None, "")]

    def box_config(self, run: BoxConfig) -> BoxConfig:
        """The run's boxes as this site draws them: its habit in place of the run's loose-box
        settings, what it leaves unset as the run says."""
        return replace(
            run,
            loose_margin=run.loose_margin if self.box_margin is None else self.box_margin,
            loose_jitter=run.loose_jitter if self.box_jitter is None else self.box_jitter,
            loose_bias=parse_box_bias(self.box_bias) if self.box_bias else run.loose_bias,
        )


# a site's box habit: parsed by ``habit_values``, not by the generic flat-config reader
HABIT_FIELDS = ("box_margin", "box_jitter", "box_bias")


class PrivacyBudgetExhausted(RuntimeError):
    """A site declines a round that would take it past its epsilon budget."""


_STEP = StepConfig()  # the measured step settings: one place for their defaults


@dataclass(frozen=True)
class FedTrainConfig:
    """Settings every site of a run shares (the run config); defaults are the measured ones of
    the single-site runs: 72-parameter basis decoder, sign updates, c at 3 grey levels."""

    master_seed: int = 0
    local_steps: int = 10
    batch_size: int = _STEP.batch_size
    sp_avg: int = _STEP.spsa.sp_avg
    lr: float = _STEP.spsa.lr
    update: str = _STEP.spsa.update
    beta: float = _STEP.spsa.beta
    loss: str = _STEP.loss
    target_grey: float = TARGET_GREY
    preset: str = DecoderConfig.preset
    vp_grid: int = DecoderConfig.vp_grid
    # the prompt's resolution: each site's real images are letterboxed to it (synthetic cases
    # are 128 px); 256 is LiteMedSAM's and MedSAM's own input size
    image_size: int = DecoderConfig.image_size
    # the decoder's frozen encoder; "clip:[MODEL:]PATH" needs the same weights file at that
    # path on every site (baps_fed/method/image_encoder.py)
    image_encoder: str = DecoderConfig.image_encoder
    decoder_seed: int = 0
    point_seed: int = 0  # evaluation prompts (points or boxes)
    # the prompt every image gets, at the FM and the decoder (baps_fed/data/prompts.py)
    prompt: str = POINT.kind
    box_protocol: str = POINT.box.protocol
    box_margin: float = POINT.box.loose_margin
    box_jitter: float = POINT.box.loose_jitter
    # each site's private head (baps_fed/method/private_head.py): basis | colour | box | none
    private_head: str = "basis"
    # Share of its own decoder a site keeps when a round starts: it starts from
    # (1 - keep) * global + keep * own (0: plain FedAvg, every site starts from the global).
    personal_keep: float = 0.0
    # what a train reply carries: "dense" (the update), "seeds" (steps x K scalars that the
    # coordinator replays into the update, baps_fed/codec.py) or "model" (global + update,
    # Flower's usual form, which its central DP wrappers need: coordinator/central_dp.py)
    upload: str = "dense"
    # every site of a round perturbs along the same directions (zoo.SeedKey.step0), which the
    # coordinator's scalar-median / scalar-trimmed-mean aggregations need
    shared_perturbations: bool = False

    # DP on the K loss differences of every step (baps_fed/privacy.py): clip bound C on each
    # image's K-vector, noise multiplier, Poisson rate of each step's batch, accountant
    dp: bool = False
    # the median per-image K-vector norm measured on the colonoscopy- and fundus-like sites
    # at the default c (0.21, 0.23; 90th percentile 0.39, 0.57): about half the images clipped
    dp_clip: float = 0.25
    dp_noise: float = 1.0
    dp_sample_rate: float = 0.1
    dp_accountant: str = "rdp"

    def __post_init__(self) -> None:
        if self.upload not in UPLOAD_KINDS:
            raise ValueError(
                f"upload must be one of {', '.join(UPLOAD_KINDS)}, got {self.upload!r}"
            )
        if not 0 <= self.personal_keep <= 1:
            raise ValueError(f"personal-keep must be in [0, 1], got {self.personal_keep}")
        require_positive(self, "local_steps", "batch_size", "sp_avg", "image_size")
        self.prompt_config()  # a bad prompt kind, protocol or fraction fails here
        if self.private_head not in PRIVATE_HEADS:
            raise ValueError(
                f"private-head must be one of {', '.join(PRIVATE_HEADS)}, got {self.private_head!r}"
            )
        if self.private_head == "box" and self.prompt != "box":
            raise ValueError(
                "private-head box refines each site's box prompts: set prompt to box "
                "(--prompt box), or choose another private head"
            )
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    def spsa_config(self, c: float) -> SpsaConfig:
        """The SPSA-GC step rule every site runs (and a coordinator replays), at scale c."""
        return SpsaConfig(
            sp_avg=self.sp_avg,
            c=c,
            lr=self.lr,
            schedule="constant",
            beta=self.beta,
            update=self.update,  # type: ignore[arg-type]
        )

    @classmethod
    def from_flat(cls, config: Mapping[str, Any], where: str | None = None) -> FedTrainConfig:
        """From a flat dict with Flower-style keys ("local-steps") or field names; with
        ``where`` (a table of these settings alone), any other key is an error."""
        if where is not None:
            check_keys(config, flat_keys(cls), where)
        return cls(**values_from_flat(cls, config))

    def prompt_config(self) -> PromptConfig:
        box = BoxConfig(
            protocol=self.box_protocol,  # type: ignore[arg-type]
            loose_margin=self.box_margin,
            loose_jitter=self.box_jitter,
        )
        return PromptConfig(kind=self.prompt, box=box)  # type: ignore[arg-type]

    def decoder_config(self) -> DecoderConfig:
        return DecoderConfig(
            preset=self.preset,  # type: ignore[arg-type]
            vp_grid=self.vp_grid,
            image_size=self.image_size,
            init_seed=self.decoder_seed,
            image_encoder=self.image_encoder,
        )


def site_id(name: str) -> int:
    """A stable integer for a site's name: part of its perturbation seeds."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def perturbation_key(cfg: FedTrainConfig, server_round: int, site: int, first_step: int) -> SeedKey:
    """The seed key of a site's round, ``first_step`` being its optimiser step at the start."""
    step0 = first_step if cfg.shared_perturbations else None
    return SeedKey(cfg.master_seed, server_round, site, step0)


def initial_theta(cfg: FedTrainConfig) -> np.ndarray:
    """The decoder every site starts from (the coordinator's round-0 global decoder)."""
    return build_decoder(cfg.decoder_config()).get_theta()


def start_point(theta_global: np.ndarray, personal: np.ndarray | None, keep: float) -> np.ndarray:
    """(1 - keep) * global + keep * own: where a site's round starts (its own is None in its
    first round)."""
    theta = np.asarray(theta_global, np.float32)
    if personal is None or keep == 0:
        return theta.copy()
    return ((1 - keep) * theta + keep * np.asarray(personal, np.float32)).astype(np.float32)


# Under DP only these train metrics leave a site: the optimiser's step count (public: every
# round runs local-steps steps) and the privacy spent. Everything else it measures (training-set
# size, loss, FM images, time, skipped steps) depends on its data or on the secret Poisson
# batches, outside what the accountant books: it stays in the site's own log.
DP_TRAIN_METRICS = frozenset({"spsa-step", "epsilon", "delta"})


@dataclass
class RoundResult:
    update: np.ndarray  # theta_end - theta_start, float32 (the shared weights only)
    state: SpsaState  # the site's optimiser state after the round (stays at the site)
    metrics: dict[str, float]  # aggregates only: what leaves the site (under DP: see above)
    private: np.ndarray  # the site's private head after the round (stays at the site)
    personal: np.ndarray  # the site's own shared-shape decoder after the round (stays)
    privacy: list[tuple[float, float, int]]  # the accountant's history (stays; [] without DP)
    scalars: np.ndarray  # [steps, K] float32: the K-vector of every step (seed-and-scalar form)
    c: float  # the perturbation scale the steps used (with the scalars, replays the round)
    # everything the site measured this round, ``metrics`` included: its own log and the
    # simulation's cost accounting (stays at the site)
    home: dict[str, float] = dataclasses.field(default_factory=dict)


# what a site's node config may hold: its SiteSpec (the name as "site-name"), plus the keys
# Flower's simulation engine gives every node
NODE_CONFIG_KEYS = flat_keys(SiteSpec) | {"site-name", "data"}
FLOWER_NODE_KEYS = {"partition-id", "num-partitions"}


def spec_from_flat(
    config: Mapping[str, Any], default_name: str, where: str = "node config"
) -> SiteSpec:
    """A SiteSpec from a node config (Flower keys: data, site-name, n, seed, scanner, layout,
    subset, group-by, fm, dp-epsilon-budget, dp-delta, box-margin, box-jitter, box-bias); an
    unknown key or a missing ``data`` is an error naming what to set."""
    check_keys(config, NODE_CONFIG_KEYS | FLOWER_NODE_KEYS, where)
    if "data" not in config:
        raise ValueError(
            f"{where} names no data: start the site with --node-config "
            "'data=\"/path/to/site\"' (or a synthetic modality name)"
        )
    name = str(config.get("site-name", default_name))
    values = values_from_flat(SiteSpec, config, skip=HABIT_FIELDS)
    return SiteSpec(name=name, data=str(config["data"]), **values, **habit_values(config))


def habit_values(config: Mapping[str, Any]) -> dict[str, Any]:
    """The box-habit fields a flat table sets (box-margin, box-jitter: numbers; box-bias: one
    string "left,top,right,bottom"), the one place they are read."""
    values: dict[str, Any] = {}
    for field in HABIT_FIELDS:
        key = next((k for k in (field.replace("_", "-"), field) if k in config), None)
        if key is None:
            continue
        value = config[key]
        if field == "box_bias":
            if not isinstance(value, str):  # a TOML list would not survive a node config
                raise ValueError(
                    f'config {key}: give one string "left,top,right,bottom", e.g. '
                    f'"0,0.2,0,-0.1", got {value!r}'
                )
            values[field] = value
        elif isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"config {key}: expected a fraction, got {value!r}")
        else:
            try:
                values[field] = float(value)
            except ValueError:
                raise ValueError(f"config {key}: expected a fraction, got {value!r}") from None
    return values


def site_prompt_config(cfg: FedTrainConfig, spec: SiteSpec) -> PromptConfig:
    """The prompts this site draws: the run's, its loose boxes drawn with the site's own habit.
    A habit with any other prompt is refused, not ignored: a benchmark would otherwise report
    a habit's effect that no box ever had."""
    prompting, keys = cfg.prompt_config(), spec.habit_keys()
    if not keys:
        return prompting
    if prompting.kind != "box" or prompting.box.protocol != "loose":
        raise ValueError(
            f"site {spec.name!r} sets a box habit ({', '.join(keys)}) but the run prompts with "
            f"{prompting.describe()}: run with prompt = box and box-protocol = loose, or drop "
            f"{', '.join(keys)} from the site's node config"
        )
    return replace(prompting, box=spec.box_config(prompting.box))


def site_prompt_seed(cfg: FedTrainConfig, spec: SiteSpec) -> int:
    """The seed of the site's evaluation prompts (with each sample's name): the run's
    point-seed; a site with its own habit also mixes in its id, so two sites that draw alike
    still draw their own boxes on same-named images (training batches carry the id already)."""
    if not spec.habit_keys():
        return cfg.point_seed
    return cfg.point_seed * 2**32 + site_id(spec.name)
