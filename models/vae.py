"""Variational autoencoder (VAE) with a latent vector, on the CAE's convolutional backbone.

Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014. The encoder gives the mean
and log-variance of q(z|x) = N(mu, diag sigma^2) over a latent VECTOR z; during training
z = mu + sigma * eps (the reparameterisation trick), at test time z = mu, so reconstructions
and anomaly maps are deterministic.

Loss and its weighting (chosen on purpose, see below)::

    recon = sum_{c,h,w} (x - x_hat)^2                    per image, averaged over the batch
    kl    = sum_j 1/2 (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2)   KL(q || N(0, I)), same
    loss  = recon + beta * kl

Both terms are SUMS per image (pixels resp. latent dimensions), so their balance does not
change with the image size or latent size. Multiplying by 1 / (2 s^2) shows that this is
the negative ELBO (up to constants) of a Gaussian decoder p(x|z) = N(x_hat, s^2 I) with the
fixed per-pixel variance s^2 = beta / 2. beta therefore has a meaning: the pixel noise the
model is allowed to leave unexplained. beta = 1 (s = 0.71 on [0, 1] images, larger than the
images' own spread) makes the KL dominate: the posterior collapses towards the prior and the
reconstruction is a blurry mean image. beta -> 0 turns it into a plain autoencoder. The
default beta = 0.005 (s = 0.05, i.e. 5 % of the intensity range, about the residual of a
good reconstruction) sets s^2 near the maximum-likelihood decoder variance, i.e. the
residual variance of a trained model (per-pixel MSE 0.0007-0.0023 measured on the dev
images). Measured at 64 px, 300 steps, on MVTec grid: beta = 1 collapsed (KL 3 nats,
MSE 0.021, 10x the CAE's 0.0013); beta = 0.1 still blurry (MSE 0.010); beta <= 0.02 kept
all 128 dimensions in use (KL 110-310 nats) at MSE 0.0022-0.0028; a per-pixel-mean recon with beta
scaled by 1/(C H W) would be the same loss but with a beta that must change with every image size.

The loss itself and the bounded log-variance are shared with the other VAEs
(``variational.py``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import ModelConfig
from .errors import ConfigError
from .layers import ConvDecoder, ConvEncoder, MapToVector, VectorToMap, check_conv_size
from .variational import VariationalModel, bound_logvar


@dataclass(kw_only=True)
class VAEConfig(ModelConfig):
    # Encoder stage channels (stride 2 each), as in the CAE; 4 stages = stride 16.
    widths: tuple[int, ...] = (32, 64, 128, 256)
    # Dimension of the latent vector z (the mean and log-variance each have this size).
    latent_dim: int = 128
    # Weight of the KL term against the SUMMED squared error: the Gaussian decoder's pixel
    # variance is beta / 2 (see the module docstring). 1 = collapse and blur, 0 = a CAE.
    beta: float = 0.005

    def __post_init__(self):
        super().__post_init__()
        self.widths = tuple(self.widths)  # a JSON round trip turns tuples into lists

    def size_multiple(self) -> int:
        return 2 ** len(self.widths)

    def validate(self) -> None:
        super().validate()
        check_conv_size(self.image_size, self.widths, model="vae")
        if self.latent_dim < 1:
            raise ConfigError(f"vae: latent_dim must be a positive integer, got {self.latent_dim}.")
        if not self.beta >= 0:  # also rejects NaN
            raise ConfigError(f"vae: beta must be >= 0, got {self.beta}.")


class VAE(VariationalModel):
    """VAE with a dense latent vector; reconstruct() decodes the posterior mean."""

    config_class = VAEConfig
    label = "VAE"

    def __init__(self, config: VAEConfig):
        super().__init__(config)
        c = config
        self.encoder = ConvEncoder(in_channels=c.in_channels, widths=c.widths)
        size = (c.height // self.encoder.stride, c.width // self.encoder.stride)  # (h, w) of the encoder's map
        # One dense layer gives mean and raw log-variance side by side.
        self.to_latent = MapToVector(channels=c.widths[-1], size=size, out_features=2 * c.latent_dim)
        self.from_latent = VectorToMap(in_features=c.latent_dim, channels=c.widths[-1], size=size)
        self.decoder = ConvDecoder(out_channels=c.in_channels, widths=c.widths)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> mean and log-variance of q(z|x), each (B, latent_dim), float32."""
        mu, raw = self.to_latent(self.encoder(x)).float().chunk(2, dim=1)  # 2 x (B, latent_dim)
        return mu, bound_logvar(raw)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.from_latent(z))  # (B, C, H, W) in [0, 1]
