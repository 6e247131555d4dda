"""The arrays behind the figures that show models at work: trained models run on a few test
images, and samples of the GRF prior. ``plots`` draws what these return and
never builds, runs or samples a model itself::

    ex = examples.gallery_examples(trained, test_split)   # model name -> model, MVTecAD "test"
    plots.anomaly_gallery(path, images=ex.images, masks=ex.masks, ...)

Everything returned is numpy on the CPU: float32 images in [0, 1] as (N, C, H, W), maps as
(N, H, W), boolean masks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models import grf, size_label
from models.base import eval_mode
from models.errors import ConfigError

GRF_KERNELS = grf.KERNELS
GRF_RHOS = (1.0, 2.0, 4.0)  # latent px


def pick_examples(labels: np.ndarray, defect_types: list[str], n_good: int, n_defect: int) -> list[int]:
    """Indices of the images to show, deterministic: ``n_good`` good images evenly spaced,
    then ``n_defect`` defective ones taken round-robin over the defect types (sorted)."""
    good = np.flatnonzero(labels == 0)
    picks = [int(i) for i in good[np.unique(np.linspace(0, len(good) - 1, n_good).round().astype(int))]] if (
        n_good > 0 and len(good)) else []
    by_type: dict[str, list[int]] = {}
    for i in np.flatnonzero(labels == 1):
        by_type.setdefault(defect_types[i], []).append(int(i))
    queues = [by_type[t] for t in sorted(by_type)]
    chosen: list[int] = []
    k = 0
    while len(chosen) < n_defect and any(k < len(q) for q in queues):
        chosen += [q[k] for q in queues if k < len(q)][: n_defect - len(chosen)]
        k += 1
    return picks + chosen


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


# --------------------------------------------------------------------------------------
# Anomaly-map gallery


@dataclass(frozen=True)
class GalleryExamples:
    """What ``plots.anomaly_gallery`` draws for one category."""

    category: str
    row_labels: list[str]  # per image: "good" or its defect type
    images: np.ndarray  # (N, C, H, W) float32 in [0, 1]
    masks: np.ndarray  # (N, H, W) bool, the ground truth
    reconstructions: dict[str, np.ndarray]  # model name -> (N, C, H, W) float32
    maps: dict[str, np.ndarray]  # model name -> (N, H, W) float32, the model's own anomaly_map


def gallery_examples(models_by_name: dict, dataset, *, n_good: int = 2, n_defect: int = 4) -> GalleryExamples:
    """Run each model (name -> trained model) on a few test images of ``dataset`` (an MVTecAD
    test split, or anything with its ``images``, ``masks``, ``labels``, ``defect_types``,
    ``image_size``, ``in_channels``): ``n_good`` good and ``n_defect`` defective images,
    defects spread over the defect types (``pick_examples``).

    The maps are each model's ``anomaly_map``, the maps its scores come from.
    """
    if not models_by_name:
        raise ConfigError("a gallery needs at least one trained model.")
    for name, m in models_by_name.items():
        c = m.config
        if (c.image_size, c.in_channels) != (dataset.image_size, dataset.in_channels):
            raise ConfigError(
                f"model {name} takes {c.in_channels}-channel {size_label(c.image_size)}-px images but the dataset has "
                f"{dataset.in_channels}-channel {size_label(dataset.image_size)}-px ones; load the dataset with the "
                "model's size."
            )
    labels = np.asarray(dataset.labels)
    idx = pick_examples(labels, list(dataset.defect_types), n_good, n_defect)
    x = dataset.images[idx].float() / 255.0  # (N, C, H, W) in [0, 1]
    recons, maps = {}, {}
    for name, m in models_by_name.items():
        with eval_mode(m), torch.inference_mode():
            xd = x.to(_device(m))
            recons[name] = m.reconstruct(xd).float().cpu().numpy()  # (N, C, H, W)
            maps[name] = m.anomaly_map(xd).float().cpu().numpy()  # (N, H, W)
    return GalleryExamples(
        category=str(getattr(dataset, "category", "")),
        row_labels=["good" if labels[i] == 0 else str(dataset.defect_types[i]) for i in idx],
        images=x.numpy(),
        masks=np.asarray(dataset.masks[idx]) > 0,
        reconstructions=recons,
        maps=maps,
    )


# --------------------------------------------------------------------------------------
# GRF prior samples (README figure)


@dataclass(frozen=True)
class PriorSamples:
    """What ``plots.grf_prior_figure`` draws."""

    kernels: tuple[str, ...]
    rhos: tuple[float, ...]  # correlation lengths, latent px
    samples: np.ndarray  # (kernels, rhos, size, size) float32, one draw per (kernel, rho)
    distances: np.ndarray  # (M,) torus distances d at which the kernels are drawn
    kernel_values: np.ndarray  # (kernels, rhos, M): k(d) with prior variance s^2 = 1


def grf_prior_samples(*, size: int = 64, kernels=GRF_KERNELS, rhos=GRF_RHOS, seed: int = 0) -> PriorSamples:
    """One draw of ``grf.GRFPrior`` (variance 1) on a ``size`` x ``size`` torus per kernel
    and rho, all from the same white noise (the generator is reseeded for each), so the draws
    differ only by the covariance; and each kernel k(d) for d in [0, 3 max(rhos)]."""
    kernels, rhos = tuple(kernels), tuple(float(r) for r in rhos)
    d = torch.linspace(0, 3 * max(rhos), 200, dtype=torch.float64)
    samples = np.stack([
        np.stack([grf.GRFPrior(size, size, kernel=kernel, rho=rho)
                  .sample(1, 1, generator=torch.Generator().manual_seed(seed))[0, 0].numpy()  # (size, size)
                  for rho in rhos])
        for kernel in kernels])  # (K, R, size, size)
    values = np.stack([np.stack([grf.kernel_values(d, kernel, rho, 1.0).numpy() for rho in rhos])
                       for kernel in kernels])  # (K, R, M)
    return PriorSamples(kernels=kernels, rhos=rhos, samples=samples, distances=d.numpy(), kernel_values=values)


# --------------------------------------------------------------------------------------
# VAE (latent vector) vs VAE-GRF (latent map)


@dataclass(frozen=True)
class LatentExamples:
    """What ``plots.vae_vs_grf_figure`` draws. Rows of the latents and decodings: first the N
    images encoded (posterior mean), then draws of each model's prior."""

    images: np.ndarray  # (N, C, H, W) float32 in [0, 1]
    vae_z: np.ndarray  # (N + n, D): VAE posterior means, then draws of N(0, I)
    vae_decoded: np.ndarray  # (N + n, C, H, W)
    grf_z: np.ndarray  # (N + n, C_z, h, w): VAE-GRF posterior means, then draws of its GRF prior
    grf_decoded: np.ndarray  # (N + n, C, H, W)


def latent_examples(vae, vae_grf, images, *, n_samples: int = 2, seed: int = 0) -> LatentExamples:
    """Encode ``images`` ((N, C, H, W) in [0, 1], the models' input size) with the trained
    ``vae`` and ``vae_grf``, decode the posterior means, and decode ``n_samples`` draws of each
    prior (VAE: N(0, I); VAE-GRF: ``prior.sample``), seeded by ``seed``: the caller's random
    state is left as it was.
    """
    images = torch.as_tensor(images).float()
    gen = torch.Generator().manual_seed(seed)
    with eval_mode(vae, vae_grf), torch.inference_mode():
        dev_v, dev_g = _device(vae), _device(vae_grf)
        mu_v, _ = vae.encode(images.to(dev_v))  # (N, D)
        mu_g, _ = vae_grf.encode(images.to(dev_g))  # (N, C_z, h, w)
        z_v = torch.randn(n_samples, mu_v.shape[1], generator=gen)  # (n, D) ~ N(0, I)
        z_g = vae_grf.prior.sample(n_samples, mu_g.shape[1], generator=gen)  # (n, C_z, h, w) ~ GRF
        z_v = torch.cat([mu_v.float().cpu(), z_v])  # (N + n, D)
        z_g = torch.cat([mu_g.float().cpu(), z_g.float().cpu()])  # (N + n, C_z, h, w)
        dec_v = vae.decode(z_v.to(dev_v)).float().cpu()  # (N + n, C, H, W)
        dec_g = vae_grf.decode(z_g.to(dev_g)).float().cpu()
    return LatentExamples(images=images.cpu().numpy(), vae_z=z_v.numpy(), vae_decoded=dec_v.numpy(),
                          grf_z=z_g.numpy(), grf_decoded=dec_g.numpy())
