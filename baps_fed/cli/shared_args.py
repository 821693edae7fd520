"""The data, FM, device and prompt options the single-site commands share, and how they turn
into configs (one place for each option's default and help)."""

from __future__ import annotations

import argparse

from baps_fed.data.boxes import BOX_PROTOCOLS, BoxConfig
from baps_fed.data.prompts import PROMPT_KINDS, PromptConfig
from baps_fed.federation.contract import SiteSpec
from baps_fed.method.ip_decoder import DecoderConfig

SINGLE_SITE_CASES = 400  # synthetic cases of a single-site run (train/val/test splits)


def add_image_size(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--image-size",
        type=int,
        default=DecoderConfig.image_size,
        help="real images are letterboxed to this square size (and the prompt made at it); "
        "256 suits LiteMedSAM, whose input is 256 px",
    )


def add_prompt_args(p: argparse.ArgumentParser) -> None:
    prompt, box = PromptConfig(), BoxConfig()
    p.add_argument(
        "--prompt",
        default=prompt.kind,
        choices=PROMPT_KINDS,
        help="the prompt each image gets: one positive point, or one box (the MedSAM family "
        "takes boxes only)",
    )
    p.add_argument(
        "--point-mode",
        default=prompt.point_mode,
        choices=["uniform", "centroid"],
        help="where the point goes: a foreground pixel drawn at random (the paper's protocol), "
        "or the mask's centroid (moved inside a non-convex mask)",
    )
    p.add_argument(
        "--box-protocol",
        default=box.protocol,
        choices=BOX_PROTOCOLS,
        help="tight: the mask's box, each side out by 0..--tight-shift of the image (MedSAM's "
        "training boxes); loose: out by --box-margin +- --box-jitter of the box (a quick "
        "clinician's box)",
    )
    p.add_argument(
        "--tight-shift",
        type=float,
        default=box.tight_shift,
        help="tight boxes: most outward move per side, a fraction of the image's longest side",
    )
    p.add_argument(
        "--box-margin",
        type=float,
        default=box.loose_margin,
        help="loose boxes: outward move per side, a fraction of the box's size",
    )
    p.add_argument(
        "--box-jitter",
        type=float,
        default=box.loose_jitter,
        help="loose boxes: +- uniform jitter per side, a fraction of the box's size",
    )


def prompt_config(args: argparse.Namespace) -> PromptConfig:
    box = BoxConfig(
        protocol=args.box_protocol,
        tight_shift=args.tight_shift,
        loose_margin=args.box_margin,
        loose_jitter=args.box_jitter,
    )
    return PromptConfig(kind=args.prompt, point_mode=args.point_mode, box=box)


def add_data_args(p: argparse.ArgumentParser) -> None:
    site = SiteSpec
    p.add_argument("--data", required=True, help="synthetic modality name or a data folder")
    add_layout_arg(p)
    add_manifest_args(p, group_by=True)
    p.add_argument("--n", type=int, default=SINGLE_SITE_CASES, help="synthetic cases")
    add_scanner_arg(p)
    p.add_argument(
        "--seed",
        type=int,
        default=site.seed,
        help="seed of the synthetic cases and of the prompts drawn; train: also of SPSA's "
        "perturbations and the decoder's initial weights",
    )
    p.add_argument("--fm", default=site.fm, help="FM spec (docs/fm-service.md)")
    add_device_arg(p)
    add_prompt_args(p)


def add_layout_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--layout",
        default=SiteSpec.layout,
        help="a data folder's layout: auto (detected) | generic | isic2018 | kvasir | busi | "
        "optic_disc (docs/data.md)",
    )


def add_scanner_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scanner",
        type=int,
        default=SiteSpec.scanner,
        help="synthetic data: the scanner profile (white balance, gamma, noise, blur); 0 is the "
        "reference device, each other number another",
    )


def add_manifest_args(p: argparse.ArgumentParser, group_by: bool) -> None:
    """--subset (and --group-by): part of a data folder, and the groups its split keeps whole,
    by the folder's manifest.csv (docs/data.md)."""
    text = "COLUMN=V1,V2 conditions joined by ';', e.g. 'sequence=1,2,3' or 'quality=good'"
    p.add_argument("--subset", default=SiteSpec.subset, help=text)
    if group_by:
        text = "a column (e.g. sequence, patient) whose groups train/val/test keep whole"
        p.add_argument("--group-by", default=SiteSpec.group_by, help=text)


def add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="cpu",
        help="torch device of a local FM: cpu, or cuda (bfloat16 autocast and batches of 64 by "
        "default there; the spec's ?dtype=float32 keeps full precision)",
    )
