"""What the three VAEs share: the negative ELBO, its weighting, and safe log-variances.

VAE, ViT-VAE and VAE-GRF differ only in how they encode, decode and price the latent (the
KL against their prior). Everything else lives here so the three are trained and scored
identically and stay comparable (Kingma & Welling, "Auto-Encoding Variational Bayes",
ICLR 2014)::

    recon = sum_{c,h,w} (t - x_hat)^2        per image, averaged over the batch
    kl    = KL(q(z|x) || p(z))               summed over all latent values, batch mean
    loss  = recon + beta * kl

with x_hat decoded from z ~ q(z|x) and t the target: x itself, or in repair training the clean
image of which x is a corrupted copy (the likelihood is of the clean image given the corrupted
one; the KL is q(z|x)'s, unchanged). Both terms are SUMS per image, so their balance does not
move with image or latent size. Multiplying by 1 / (2 s^2) shows this is the negative ELBO (up
to constants) of a Gaussian decoder N(x_hat, s^2 I) with fixed pixel variance s^2 = beta / 2:
beta is the pixel noise the model may leave unexplained (see vae.py for how the default was
measured). Training uses z = mu + sigma * eps; reconstruct() and the eval-mode loss use z = mu,
so maps and validation losses are deterministic.
"""
from __future__ import annotations

import torch

from .base import AnomalyModel, loss_target

LOGVAR_LIMIT = 10.0  # |log sigma^2| <= 10: sigma in [0.0067, 148]


def bound_logvar(raw: torch.Tensor) -> torch.Tensor:
    """Squash a raw log-variance smoothly into [-LOGVAR_LIMIT, LOGVAR_LIMIT].

    exp() cannot overflow and sigma cannot reach 0, and unlike a hard clamp the gradient
    never vanishes; constant, black or white images give finite losses.
    """
    return LOGVAR_LIMIT * torch.tanh(raw / LOGVAR_LIMIT)


def standard_normal_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) summed over all but the batch dim -> (B,)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(dim=1)


class VariationalModel(AnomalyModel):
    """Base of the VAEs: subclasses give encode(), decode() and kl(); config has ``beta``."""

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> mean and bounded log-variance of q(z|x), float32, same shape."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent -> (B, C, H, W) reconstruction in [0, 1]."""
        raise NotImplementedError

    def kl(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """KL(q(z|x) || prior) per sample -> (B,); the standard normal unless overridden."""
        return standard_normal_kl(mu, logvar)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        mu, _ = self.encode(x)
        return self.decode(mu)

    def loss(self, x: torch.Tensor, target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Negative ELBO (module docstring) of ``target`` (None = x) given ``x``; eval mode uses z = mu."""
        target = loss_target(x, target)
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        x_hat = self.decode(z)
        recon = (x_hat.float() - target.float()).pow(2).flatten(1).sum(dim=1).mean()  # summed per image
        kl = self.kl(mu, logvar).mean()
        loss = recon + self.config.beta * kl
        return {"loss": loss, "recon": recon.detach(), "kl": kl.detach()}
