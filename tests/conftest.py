from __future__ import annotations

import pytest
import torch

from baps_fed.fm.sam_builder import SamArchitecture, build_sam

# A SAM-architecture small enough to build in milliseconds, with windowed and global attention
# and relative positions, like the published ViT configs.
SMALL_ARCH = SamArchitecture(
    img_size=64,
    patch_size=8,
    embed_dim=32,
    depth=2,
    num_heads=2,
    global_attn_indexes=(1,),
    window_size=4,
    use_rel_pos=True,
    prompt_dim=32,
    decoder_mlp_dim=64,
    decoder_heads=2,
    iou_hidden_dim=32,
)


@pytest.fixture(scope="session", autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture
def small_sam():
    torch.manual_seed(0)
    sam = build_sam(SMALL_ARCH)
    with torch.no_grad():  # zero-initialised parts (rel_pos) must carry real values too
        for p in sam.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return sam.eval()
