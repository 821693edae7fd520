"""The IP decoder: zero at step 0, exact checkpoints, prompts that survive the uint8 cast."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from baps_fed.data.prompts import Prompts
from baps_fed.method.image_encoder import SmallImageEncoder
from baps_fed.method.ip_decoder import DecoderConfig, IPDecoder, load_decoder, save_decoder
from baps_fed.method.visual_prompt import apply_prompt, grey_levels


def _decoder(preset="basis", seed=0) -> IPDecoder:
    torch.manual_seed(seed)
    return IPDecoder(DecoderConfig(preset=preset), SmallImageEncoder().eval(), "test-encoder")


def _batch(b=3):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (b, 128, 128, 3), dtype=np.uint8)
    points = rng.uniform(10, 118, (b, 1, 2)).astype(np.float32)
    return images, points


@pytest.mark.parametrize("preset", ["basis", "paper"])
def test_step_zero_leaves_images_untouched(preset):
    dec = _decoder(preset)
    images, points = _batch()
    prompts = dec.prompts(dec.get_theta(), dec.encode(images, Prompts(points=points)))
    assert prompts.shape == (1, 3, 3, 128, 128)
    assert not prompts.any()
    np.testing.assert_array_equal(apply_prompt(images, prompts[0]), images)


def test_preset_sizes():
    assert _decoder("basis").num_params == 72  # 3 channels x (4 cosines + 2 bumps) x (3 + 1)
    assert 400_000 < _decoder("paper").num_params < 600_000


@pytest.mark.parametrize("preset", ["basis", "paper"])
def test_batched_thetas_equal_one_at_a_time(preset):
    dec = _decoder(preset)
    images, points = _batch()
    inputs = dec.encode(images, Prompts(points=points))
    thetas = np.random.default_rng(1).normal(0, 0.1, (4, dec.num_params)).astype(np.float32)
    together = dec.prompts(thetas, inputs)
    for t in range(4):
        np.testing.assert_allclose(together[t], dec.prompts(thetas[t], inputs)[0], atol=1e-6)
    assert np.abs(together).max() > 0


def test_basis_bumps_follow_the_point():
    dec = _decoder("basis")
    theta = np.zeros(dec.num_params, np.float32)
    coef = theta.reshape(3 * 6, 4)
    coef[4, 0] = 1.0  # red channel, narrow bump, bias feature
    images, points = _batch(1)
    points[:] = [[[30.0, 90.0]]]
    red = dec.prompts(coef.ravel(), dec.encode(images, Prompts(points=points)))[0, 0, 0]
    y, x = np.unravel_index(red.argmax(), red.shape)
    assert abs(x - 30) <= 1 and abs(y - 90) <= 1


@pytest.mark.parametrize("preset", ["basis", "paper"])
def test_checkpoint_round_trip_is_bit_exact(tmp_path, monkeypatch, preset):
    dec = _decoder(preset)
    theta = np.random.default_rng(2).normal(0, 0.1, dec.num_params).astype(np.float32)
    dec.set_theta(theta)
    path = tmp_path / "decoder.pt"
    save_decoder(path, dec, {"step": 7})
    monkeypatch.setattr(
        "baps_fed.method.ip_decoder.load_image_encoder",
        lambda _path=None: (dec.encoder, "test-encoder"),
    )
    loaded, extra = load_decoder(path)
    assert extra == {"step": 7}
    np.testing.assert_array_equal(loaded.get_theta(), theta)
    assert torch.equal(loaded.fourier, dec.fourier)
    images, points = _batch()
    np.testing.assert_array_equal(
        loaded.prompts(theta, loaded.encode(images, Prompts(points=points))),
        dec.prompts(theta, dec.encode(images, Prompts(points=points))),
    )


def test_checkpoint_refuses_another_encoder(tmp_path, monkeypatch):
    dec = _decoder()
    save_decoder(tmp_path / "d.pt", dec)
    monkeypatch.setattr(
        "baps_fed.method.ip_decoder.load_image_encoder",
        lambda _path=None: (dec.encoder, "other-encoder"),
    )
    with pytest.raises(ValueError, match="trained with image encoder test-encoder"):
        load_decoder(tmp_path / "d.pt")


def test_small_prompts_vanish_in_the_uint8_cast_and_larger_ones_survive():
    images = np.full((1, 4, 4, 3), 100, np.uint8)
    tiny = np.full((1, 3, 4, 4), 0.4 / 58.0, np.float32)  # under half a grey level
    assert np.array_equal(apply_prompt(images, tiny), images)
    two_levels = np.full((1, 3, 4, 4), 2 / 58.0, np.float32)
    assert (apply_prompt(images, two_levels).astype(int) - 100 == 2).all()
    assert grey_levels(0.05) == pytest.approx(2.9, abs=0.05)


def test_vp_is_input_independent_and_differentiable():
    dec = IPDecoder(DecoderConfig(preset="vp", vp_grid=1), SmallImageEncoder(), "test")
    assert dec.num_params == 3
    images, points = _batch()
    theta = torch.tensor([[0.1, -0.2, 0.3]], requires_grad=True)
    out = dec.prompt_tensor(theta, dec.encode(images, Prompts(points=points)))
    assert out.shape == (1, 3, 3, 128, 128)
    assert torch.allclose(out[0, 0], out[0, 2])
    assert torch.allclose(out[0, 1, 1], torch.full((128, 128), -0.2))
    out.sum().backward()
    assert theta.grad is not None and (theta.grad != 0).all()


def _boxes(b=3):
    return np.array([[20, 30, 60, 90], [70, 10, 120, 40], [0, 0, 128, 128]][:b], np.float32)


@pytest.mark.parametrize("preset", ["basis", "paper", "vp"])
def test_box_prompts_keep_the_decoder_shape_and_start_at_zero(preset):
    """One decoder (same theta) serves points and boxes; step 0 is the zero-shot FM either way."""
    dec = _decoder(preset)
    images, _ = _batch()
    out = dec.prompts(dec.get_theta(), dec.encode(images, Prompts(boxes=_boxes())))
    assert out.shape == (1, 3, 3, 128, 128) and not out.any()
    theta = np.random.default_rng(0).standard_normal(dec.num_params).astype(np.float32) * 0.1
    assert np.abs(dec.prompts(theta, dec.encode(images, Prompts(boxes=_boxes())))).max() > 0


def test_basis_bumps_are_centred_on_the_box_and_scale_with_it():
    """With boxes, the bumps sit at the box centre, wide along the box's long side."""
    dec = _decoder("basis")
    images, _ = _batch(1)
    n_maps = dec.cfg.cosine_grid**2 + len(dec.cfg.bump_sigmas)
    coef = np.zeros((3 * n_maps, dec.cfg.feature_rank + 1), np.float32)
    coef[n_maps - 1, 0] = 1.0  # red channel, the wide bump, bias term only
    wide = Prompts(boxes=np.array([[10, 50, 110, 70]]))  # 100 x 20 box centred at (60, 60)
    red = dec.prompts(coef.ravel(), dec.encode(images, wide))[0, 0, 0]
    y, x = np.unravel_index(red.argmax(), red.shape)
    assert abs(x - 60) <= 1 and abs(y - 60) <= 1
    assert red[60, 100] > 10 * red[100, 60]  # 40 px along the box vs 40 px across it


def test_box_corners_change_the_paper_decoders_embedding():
    dec = _decoder("paper")
    images, _ = _batch(2)
    a = dec.encode(images, Prompts(boxes=_boxes(2)))
    b = dec.encode(images, Prompts(boxes=_boxes(2)[:, [0, 1, 2, 3]] + [0, 0, 5, 5]))
    assert a.point_embedding.shape == (2, 2 * dec.cfg.fourier_dim)
    assert not torch.equal(a.point_embedding, b.point_embedding)  # the far corner matters
    torch.testing.assert_close(a.points01, torch.tensor([[40.5, 60.5], [95.5, 25.5]]) / 128)


def test_the_reference_probe_is_drawn_once_per_process(monkeypatch):
    """Every basis decoder built (each site message, each coordinator check) normalises its
    features on the same general-domain probe; drawing it costs seconds, so it is drawn once and
    every later decoder reads the same images."""
    import baps_fed.data.general as general
    from baps_fed.method import ip_decoder

    drawn = []

    def spy(*args, **kwargs):
        drawn.append(real(*args, **kwargs))
        return drawn[-1]

    real = general.general_dataset
    monkeypatch.setattr(general, "general_dataset", spy)
    ip_decoder._reference_probe.cache_clear()
    first, again = _decoder(), _decoder()
    assert len(drawn) == 1
    probe = ip_decoder._reference_probe()
    np.testing.assert_array_equal(probe, np.stack([s.image for s in drawn[0]]))
    assert not probe.flags.writeable  # shared: no caller can change it for the others
    torch.testing.assert_close(first.feat_mean, again.feat_mean, rtol=0, atol=0)
    torch.testing.assert_close(first.feat_std, again.feat_std, rtol=0, atol=0)
