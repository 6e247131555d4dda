"""VAE-GRF: a VAE whose latent is a MAP z in R^{C x h x w} with a Gaussian-random-field prior.

The convolutional encoder (``layers.ConvEncoder``, stride 2**len(widths), so h x w = H/8 x W/8
by default) gives a feature map; two 1x1 convolutions turn it into the mean and log-variance of
q(z|x) = N(mu, diag sigma^2) at every latent site. Each of the C latent channels has the prior
N(0, Sigma), Sigma a stationary kernel on the h x w torus (``grf.GRFPrior``): neighbouring
latent sites are correlated over rho latent pixels, which asks the code to be spatially
smooth the way normal texture is, instead of i.i.d. per site. With rho -> 0 the prior is
N(0, s^2 I) and this is exactly a VAE with a map latent (tests/test_grf.py checks it).

Loss, weighted exactly as ``models/vae.py`` so the two are comparable::

    recon = sum_{c,h,w} (x - x_hat)^2        per image, averaged over the batch
    kl    = KL(q(z|x) || GRF prior)          summed over channels and sites (grf.GRFPrior.kl)
    loss  = recon + beta * kl

i.e. the negative ELBO of a Gaussian decoder with pixel variance beta / 2 (Kingma & Welling
2014; see vae.py for why beta = 0.005). Training uses z = mu + sigma * eps; reconstruct()
and the eval-mode loss use z = mu, so maps are deterministic.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import ModelConfig
from .errors import ConfigError
from .grf import RHO_BOUNDS, GRFPrior, check_prior_settings
from .layers import ConvDecoder, ConvEncoder, check_conv_size
from .variational import VariationalModel, bound_logvar


@dataclass(kw_only=True)
class VAEGRFConfig(ModelConfig):
    # Encoder stage channels (stride 2 each); 3 stages = latent map at H/8 (16 x 16 at 128 px).
    widths: tuple[int, ...] = (32, 64, 128)
    # Channels C of the latent map; C * (H/8)^2 latent dims (4096 at 128 px). Few channels keep
    # the bottleneck narrow enough that defects are not copied through.
    latent_channels: int = 16
    # KL weight against the SUMMED squared error (Gaussian decoder with pixel variance beta/2), as vae.py.
    beta: float = 0.005
    # GRF prior per latent channel: kernel, correlation length rho in latent px (0 = white
    # noise, the plain map-latent VAE), marginal variance s^2, relative spectrum floor.
    kernel: str = "exponential"
    rho: float = 2.0
    prior_variance: float = 1.0
    prior_eps: float = 1e-6
    # Learn rho (in log space, clamped to rho_bounds) instead of fixing it.
    learn_rho: bool = False
    rho_bounds: tuple[float, float] = RHO_BOUNDS

    def __post_init__(self):
        super().__post_init__()
        self.widths = tuple(self.widths)  # a JSON round trip turns tuples into lists
        self.rho_bounds = tuple(self.rho_bounds)

    def size_multiple(self) -> int:
        return 2 ** len(self.widths)

    def validate(self) -> None:
        super().validate()
        check_conv_size(self.image_size, self.widths, model="vae_grf")
        if self.latent_channels < 1:
            raise ConfigError(f"vae_grf: latent_channels must be a positive integer, got {self.latent_channels}.")
        if not self.beta >= 0:  # also rejects NaN
            raise ConfigError(f"vae_grf: beta must be >= 0, got {self.beta}.")
        check_prior_settings(kernel=self.kernel, rho=self.rho, variance=self.prior_variance, eps=self.prior_eps,
                             learn_rho=self.learn_rho, rho_bounds=self.rho_bounds, where="vae_grf")


class VAEGRF(VariationalModel):
    """Map-latent VAE with a GRF prior; reconstruct() decodes the posterior mean."""

    config_class = VAEGRFConfig
    label = "VAE-GRF"

    def __init__(self, config: VAEGRFConfig):
        super().__init__(config)
        c = config
        self.encoder = ConvEncoder(in_channels=c.in_channels, widths=c.widths)
        h, w = c.height // self.encoder.stride, c.width // self.encoder.stride  # latent map size
        # 1x1 conv heads: mean and raw log-variance at every site, side by side.
        self.to_latent = nn.Conv2d(c.widths[-1], 2 * c.latent_channels, kernel_size=1)
        # Back to the decoder's width; the activation keeps it from merging with the first deconv.
        self.from_latent = nn.Sequential(
            nn.Conv2d(c.latent_channels, c.widths[-1], kernel_size=1), nn.LeakyReLU(0.2, inplace=True)
        )
        self.decoder = ConvDecoder(out_channels=c.in_channels, widths=c.widths)
        self.prior = GRFPrior(
            h, w, kernel=c.kernel, rho=c.rho, variance=c.prior_variance, eps=c.prior_eps,
            learn_rho=c.learn_rho, rho_bounds=c.rho_bounds,
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C_in, H, W) -> mean and log-variance of q(z|x), each (B, latent_channels, h, w), float32."""
        mu, raw = self.to_latent(self.encoder(x)).float().chunk(2, dim=1)  # 2 x (B, C, h, w)
        return mu, bound_logvar(raw)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.from_latent(z))  # (B, C_in, H, W) in [0, 1]

    def kl(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return self.prior.kl(mu, logvar)  # (B,), summed over channels and sites

    def loss(self, x: torch.Tensor, target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out = super().loss(x, target)
        if self.config.learn_rho:
            out["rho"] = self.prior.rho.detach()
        return out
