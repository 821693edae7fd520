"""SAM architectures as data, and one builder from segment-anything's own modules.

segment-anything's ``build_sam.py`` hard-codes 1024 px inputs and 256-d prompts; describing the
architecture as a dataclass lets the same builder make ViT-B/L/H (the published configs below),
the embedded tiny FM, and the small configs tests write checkpoints for.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from torch import nn


@dataclass(frozen=True)
class SamArchitecture:
    img_size: int = 1024
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14  # 0: global attention in every block
    use_rel_pos: bool = True
    prompt_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    iou_hidden_dim: int = 256

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size


SAM_ARCHITECTURES: dict[str, SamArchitecture] = {
    # The published Segment Anything configurations (segment_anything/build_sam.py).
    "vit_b": SamArchitecture(),
    "vit_l": SamArchitecture(
        embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)
    ),
    "vit_h": SamArchitecture(
        embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)
    ),
    # The embedded default FM: 128 px, 8 px patches (a 16x16 grid), global attention throughout.
    "tiny": SamArchitecture(
        img_size=128,
        patch_size=8,
        embed_dim=192,
        depth=6,
        num_heads=6,
        global_attn_indexes=(),
        window_size=0,
        use_rel_pos=False,
        prompt_dim=128,
        decoder_mlp_dim=512,
        decoder_heads=4,
        iou_hidden_dim=128,
    ),
}


def build_sam(arch: SamArchitecture) -> Sam:
    encoder = ImageEncoderViT(
        img_size=arch.img_size,
        patch_size=arch.patch_size,
        embed_dim=arch.embed_dim,
        depth=arch.depth,
        num_heads=arch.num_heads,
        mlp_ratio=4.0,
        out_chans=arch.prompt_dim,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_abs_pos=True,
        use_rel_pos=arch.use_rel_pos,
        rel_pos_zero_init=True,
        window_size=arch.window_size,
        global_attn_indexes=arch.global_attn_indexes,
    )
    prompt = PromptEncoder(
        embed_dim=arch.prompt_dim,
        image_embedding_size=(arch.grid, arch.grid),
        input_image_size=(arch.img_size, arch.img_size),
        mask_in_chans=arch.mask_in_chans,
    )
    decoder = MaskDecoder(
        transformer_dim=arch.prompt_dim,
        transformer=TwoWayTransformer(
            depth=arch.decoder_depth,
            embedding_dim=arch.prompt_dim,
            mlp_dim=arch.decoder_mlp_dim,
            num_heads=arch.decoder_heads,
        ),
        num_multimask_outputs=3,
        iou_head_depth=3,
        iou_head_hidden_dim=arch.iou_hidden_dim,
    )
    return Sam(encoder, prompt, decoder)
