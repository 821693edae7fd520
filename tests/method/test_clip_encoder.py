"""CLIP's image tower as the decoder's encoder, tested on a tiny open_clip model written here
(the real ViT-B/32 weights are a user's local file; nothing is downloaded)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

open_clip = pytest.importorskip("open_clip")

from baps_fed.data.prompts import Prompts  # noqa: E402
from baps_fed.method.image_encoder import load_image_encoder  # noqa: E402
from baps_fed.method.ip_decoder import DecoderConfig, build_decoder, load_decoder, save_decoder  # noqa: E402

TINY = "baps-test-clip"
TINY_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def clip_weights(tmp_path_factory):
    """Two tiny open_clip checkpoints (different random weights) on disk."""
    root = tmp_path_factory.mktemp("clip")
    (root / f"{TINY}.json").write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(root / f"{TINY}.json")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = open_clip.create_model(TINY)
        paths.append(root / f"weights{seed}.bin")
        torch.save(model.state_dict(), paths[-1])
    return paths


def test_the_clip_encoder_is_the_checkpoints_image_tower(clip_weights):
    enc, ident = load_image_encoder(f"clip:{TINY}:{clip_weights[0]}")
    assert ident.startswith(f"clip-{TINY}:") and enc.dim == 16
    model = open_clip.create_model(TINY, pretrained=str(clip_weights[0])).eval()
    images = torch.randint(0, 256, (2, 3, 32, 32)).float()  # already the tower's size
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model.encode_image((images / 255 - mean) / std)
        torch.testing.assert_close(enc(images), expected)
        assert enc(torch.zeros(1, 3, 128, 128)).shape == (1, 16)  # resized to 32 px first
    assert not any(p.requires_grad for p in enc.parameters())


def test_a_clip_decoder_starts_at_zero_and_reloads_exactly(clip_weights, tmp_path):
    cfg = DecoderConfig(image_encoder=f"clip:{TINY}:{clip_weights[0]}")
    dec = build_decoder(cfg)
    assert dec.num_params == 72  # the basis preset's size does not depend on the encoder
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 128, 128, 3), dtype=np.uint8)
    inputs = dec.encode(images, Prompts(points=np.array([[[40, 60]], [[64, 64]]])))
    assert np.all(dec.prompts(dec.get_theta(), inputs) == 0)  # step 0 is zero-shot
    theta = rng.normal(0, 0.1, dec.num_params).astype(np.float32)
    dec.set_theta(theta)
    save_decoder(tmp_path / "d.pt", dec)
    back, _ = load_decoder(tmp_path / "d.pt")
    np.testing.assert_array_equal(
        back.prompts(
            theta,
            back.encode(images, Prompts(points=np.array([[[40, 60]], [[64, 64]]]))),
        ),
        dec.prompts(theta, inputs),
    )
    # the weights moved: the same file elsewhere loads, other weights are refused by name
    moved = tmp_path / "elsewhere.bin"
    moved.write_bytes(clip_weights[0].read_bytes())
    assert load_decoder(tmp_path / "d.pt", moved)[0].encoder_id == dec.encoder_id
    with pytest.raises(ValueError, match="trained with image encoder clip-"):
        load_decoder(tmp_path / "d.pt", clip_weights[1])


def test_bad_clip_specs_say_what_to_give(clip_weights, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_image_encoder(f"clip:{tmp_path / 'missing.bin'}")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a ViT-B-32 open_clip checkpoint"):
        load_image_encoder(f"clip:{junk}")
    with pytest.raises(ValueError, match="no model 'ViT-Q-1'"):
        load_image_encoder(f"clip:ViT-Q-1:{clip_weights[0]}")
    with pytest.raises(ValueError, match="unknown image encoder"):
        load_image_encoder("dino:/x")
