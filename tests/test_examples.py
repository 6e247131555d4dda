"""The arrays behind the galleries and the GRF figures (pipeline/examples.py): models run on a few
test images, prior samples; each drawn once by its plots function to check the two fit."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import models
from helpers import procedural_images
from pipeline import examples, plots
from table_helpers import toy_test_split


def test_gallery_examples_are_each_models_own_maps():
    torch.manual_seed(0)
    tiny = {"cae": dict(widths=(8, 16), latent_dim=8), "vae_grf": dict(widths=(8, 16), latent_channels=2)}
    trained = {n: models.build_model(n, image_size=32, in_channels=3, **o) for n, o in tiny.items()}
    trained["cae"].train()  # each model is left in the mode it was in
    trained["vae_grf"].eval()
    split = toy_test_split(channels=3)
    ex = examples.gallery_examples(trained, split, n_good=2, n_defect=3)
    idx = examples.pick_examples(np.asarray(split.labels), split.defect_types, 2, 3)
    x = split.images[idx].float() / 255.0
    assert ex.category == "toy" and ex.row_labels == ["good", "good", "hole", "scratch", "hole"]
    assert ex.images.dtype == np.float32 and ex.images.shape == (5, 3, 32, 32)
    np.testing.assert_array_equal(ex.images, x.numpy())
    assert ex.masks.dtype == bool and ex.masks.shape == (5, 32, 32) and ex.masks[2:].any(axis=(1, 2)).all()
    assert list(ex.maps) == list(ex.reconstructions) == ["cae", "vae_grf"]
    for name, m in trained.items():
        assert ex.maps[name].dtype == np.float32 and ex.maps[name].shape == (5, 32, 32)
        assert ex.reconstructions[name].shape == (5, 3, 32, 32)
        np.testing.assert_allclose(ex.maps[name], m.anomaly_map(x).numpy(), rtol=1e-5, atol=1e-7)
    assert trained["cae"].training and not trained["vae_grf"].training
    with pytest.raises(models.ConfigError, match="1-channel"):
        examples.gallery_examples(trained, toy_test_split(channels=1))
    with pytest.raises(models.ConfigError, match="at least one"):
        examples.gallery_examples({}, split)


def test_pick_examples_spreads_over_defect_types():
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    kinds = ["good"] * 3 + ["a", "a", "b", "c"]
    assert examples.pick_examples(labels, kinds, 2, 3) == [0, 2, 3, 5, 6]


def test_grf_prior_samples_and_figure(tmp_path):
    prior = examples.grf_prior_samples(size=16, rhos=(0.5, 1.0))
    assert prior.kernels == examples.GRF_KERNELS and prior.rhos == (0.5, 1.0)
    assert prior.samples.shape == (3, 2, 16, 16) and prior.kernel_values.shape == (3, 2, len(prior.distances))
    assert prior.kernel_values[:, :, 0] == pytest.approx(1.0)  # k(0) = s^2 = 1
    # Same white noise in every panel: each sample is the prior's own draw from that seed.
    again = models.grf.GRFPrior(16, 16, kernel="gaussian", rho=1.0).sample(
        1, 1, generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(prior.samples[2, 1], again[0, 0].numpy())
    p = plots.grf_prior_figure(tmp_path / "grf.png", samples=prior.samples, kernels=prior.kernels, rhos=prior.rhos,
                               distances=prior.distances, kernel_values=prior.kernel_values)
    assert p.is_file() and p.stat().st_size > 20_000


def test_latent_examples_and_vae_vs_grf_figure(tmp_path):
    torch.manual_seed(0)
    vae = models.build_model("vae", image_size=32, widths=(8, 16), latent_dim=8)
    vae_grf = models.build_model("vae_grf", image_size=32, widths=(8, 16), latent_channels=2)
    images = torch.rand(3, 3, 32, 32)
    state = torch.get_rng_state()
    ex = examples.latent_examples(vae, vae_grf, images, n_samples=2)
    assert torch.equal(torch.get_rng_state(), state)  # sampling is seeded, the caller's RNG untouched
    assert ex.images.shape == (3, 3, 32, 32)
    assert ex.vae_z.shape == (5, 8) and ex.grf_z.shape == (5, 2, 8, 8)  # 32 px / stride 4
    assert ex.vae_decoded.shape == ex.grf_decoded.shape == (5, 3, 32, 32)
    vae.eval()
    np.testing.assert_allclose(ex.vae_z[:3], vae.encode(images)[0].detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ex.vae_z[3:], examples.latent_examples(vae, vae_grf, images).vae_z[3:])
    p = plots.vae_vs_grf_figure(tmp_path / "vae-vae-grf.png", images=ex.images, vae_z=ex.vae_z,
                                vae_decoded=ex.vae_decoded, grf_z=ex.grf_z, grf_decoded=ex.grf_decoded, note="test")
    assert p.is_file() and p.stat().st_size > 20_000


def test_latent_examples_of_fresh_models_on_procedural_images():
    """Untrained models run too (the figure then only shows the shapes); report never draws them."""
    with torch.random.fork_rng():
        vae = models.build_model("vae", image_size=64, in_channels=3)
        vae_grf = models.build_model("vae_grf", image_size=64, in_channels=3)
    fresh = examples.latent_examples(vae, vae_grf, procedural_images(2, 64, 3), n_samples=1)
    assert fresh.images.shape == (2, 3, 64, 64) and len(fresh.vae_z) == len(fresh.grf_z) == 3
    assert fresh.vae_decoded.shape == fresh.grf_decoded.shape == (3, 3, 64, 64)


def test_latent_examples_of_rectangular_models(tmp_path):
    from pipeline import examples

    vae = models.build_model("vae", image_size=(32, 64), widths=(8, 16), latent_dim=8)
    grf = models.build_model("vae_grf", image_size=(32, 64), widths=(8, 16), latent_channels=2)
    ex = examples.latent_examples(vae, grf, procedural_images(2, vae.config.image_size, vae.config.in_channels))
    assert ex.images.shape == (2, 3, 32, 64) and ex.grf_z.shape == (4, 2, 8, 16)
    assert ex.vae_decoded.shape == ex.grf_decoded.shape == (4, 3, 32, 64)
    path = plots.vae_vs_grf_figure(tmp_path / "latents.png", images=ex.images, vae_z=ex.vae_z,
                                   vae_decoded=ex.vae_decoded, grf_z=ex.grf_z, grf_decoded=ex.grf_decoded)
    assert path.is_file()
