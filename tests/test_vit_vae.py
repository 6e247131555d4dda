"""ViT-VAE specifics the registry-wide tests do not cover: patchify, sizes, decoders, config errors."""
from __future__ import annotations

import pytest
import torch

import models
from models.vit_vae import patchify, sincos_2d, unpatchify

TINY = dict(dim=32, depth=1, heads=2, latent_dim=4, decoder_width=16)


@pytest.mark.parametrize("channels", [1, 3])
def test_patchify_round_trip_and_layout(channels):
    x = torch.rand(2, channels, 16, 24)
    tokens = patchify(x, 8)
    assert tokens.shape == (2, 2 * 3, 8 * 8 * channels)
    # Token 4 is patch row 1, column 1: pixels [8:16, 8:16], channel-last within the patch.
    torch.testing.assert_close(tokens[:, 4].reshape(2, 8, 8, channels), x[:, :, 8:16, 8:16].permute(0, 2, 3, 1))
    assert torch.equal(unpatchify(tokens, 8, channels, 16, 24), x)


@pytest.mark.parametrize("decoder,decoder_depth", [("conv", 0), ("conv", 1), ("linear", 1)])
@pytest.mark.parametrize("image_size,patch_size", [(64, 8), (128, 16), (256, 32), (48, 8), (16, 1)])
def test_sizes_channels_and_decoders(image_size, patch_size, decoder, decoder_depth):
    for channels in (1, 3):
        model = models.build_model("vit_vae", image_size=image_size, in_channels=channels, patch_size=patch_size,
                                   decoder=decoder, decoder_depth=decoder_depth, **TINY)
        x = torch.rand(2, channels, image_size, image_size)
        out = model.loss(x)
        assert torch.isfinite(out["loss"]) and set(out) == {"loss", "recon", "kl"}
        assert model.anomaly_map(x).shape == (2, image_size, image_size)


def test_image_size_must_be_a_multiple_of_the_patch():
    with pytest.raises(models.ConfigError, match="not a multiple of patch_size 16"):
        models.build_model("vit_vae", image_size=100)
    with pytest.raises(models.ConfigError, match="multiple of heads"):
        models.build_model("vit_vae", image_size=64, dim=30, heads=4)


@pytest.mark.parametrize("overrides,match", [
    (dict(patch_size=12, image_size=96), "power of 2"),
    (dict(decoder="deconv"), "decoder 'deconv' is unknown"),
    (dict(decoder="linear", decoder_depth=0), "decoder_depth >= 0"),
    (dict(decoder_width=8), "decoder_width must be >= 16"),
    (dict(latent_dim=0), "latent_dim must be a positive integer"),
])
def test_config_errors_are_one_sentence(overrides, match):
    with pytest.raises(models.ConfigError, match=match) as e:
        models.build_model("vit_vae", **{"image_size": 64, **overrides})
    assert "\n" not in str(e.value)
    # A patch size that is not a power of 2 is fine with the linear patch head.
    models.build_model("vit_vae", image_size=96, patch_size=12, decoder="linear", decoder_depth=1, **TINY)


def test_sincos_position_table_tells_tokens_apart():
    table = sincos_2d(8, 8, 32)  # (64, 32)
    assert table.shape == (64, 32) and table.abs().max() <= 1
    assert torch.unique(table, dim=0).shape[0] == 64  # every grid position gets its own code
    assert sincos_2d(4, 4, 30)[:, 28:].abs().max() == 0  # channels beyond a multiple of 4 stay zero
    # A 3 x 6 grid (96 x 48 px at patch 16 ... in patchify order): row r, column c at r * 6 + c,
    # and the square grid's codes are its top-left corner (positions are absolute indices).
    wide = sincos_2d(3, 6, 32)
    assert wide.shape == (18, 32) and torch.unique(wide, dim=0).shape[0] == 18
    torch.testing.assert_close(wide.reshape(3, 6, 32)[:, :3], sincos_2d(3, 3, 32).reshape(3, 3, 32))
    torch.testing.assert_close(sincos_2d(6, 3, 32).reshape(6, 3, 32)[:3], sincos_2d(3, 3, 32).reshape(3, 3, 32))


def test_eval_is_deterministic_and_constant_images_are_finite():
    model = models.build_model("vit_vae", image_size=32, in_channels=3, **TINY).eval()
    for value in (0.0, 1.0, 0.5):
        x = torch.full((2, 3, 32, 32), value)
        assert torch.isfinite(model.loss(x)["loss"])
        assert torch.equal(model.reconstruct(x), model.reconstruct(x))
