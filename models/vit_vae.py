"""ViT-VAE: a variational autoencoder whose encoder and decoder are vision transformers.

The image is cut into non-overlapping p x p patches (8 px at 128 -> 16 x 16 = 256 tokens),
each flattened (channel-agnostic: p*p*C values) and linearly embedded, plus a learned position
embedding (Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021). Pre-norm
self-attention blocks (``nn.TransformerEncoderLayer(norm_first=True)``) encode the tokens; a
linear head gives, PER TOKEN, the mean and log-variance of a small latent (latent_dim values
per patch, so the latent is a grid like VAE-GRF's map). z = mu + sigma * eps is decoded by a
second, shallower transformer (its own position embedding) and a linear map back to patch
pixels, then a sigmoid.

Loss, weighted exactly as ``models/vae.py`` so the models are comparable::

    recon = sum_{c,h,w} (x - x_hat)^2                          per image, batch mean
    kl    = sum_{tokens, j} 1/2 (mu^2 + sigma^2 - 1 - log sigma^2)    KL(q || N(0, I))
    loss  = recon + beta * kl

(negative ELBO of a Gaussian decoder with pixel variance beta / 2; Kingma & Welling 2014).
The small per-token latent_dim is the bottleneck: it must be narrow enough that a defect
patch cannot be copied through, and the KL prices every nat that goes through it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import ModelConfig
from .errors import ConfigError
from .variational import VariationalModel, bound_logvar

@dataclass(kw_only=True)
class ViTVAEConfig(ModelConfig):
    patch_size: int = 8  # px per patch side; image_size must be a multiple (128 -> 256 tokens)
    dim: int = 192  # token width
    depth: int = 4  # encoder blocks
    decoder_depth: int = 2  # decoder blocks (reconstruction needs less than encoding)
    heads: int = 4  # attention heads; dim must be divisible by heads (192 / 4 = 48 per head)
    mlp_ratio: float = 4.0  # MLP hidden width = mlp_ratio * dim
    dropout: float = 0.0  # no dropout: small data, few epochs, and eval must match training
    latent_dim: int = 8  # latent values per token (8 x 256 tokens = 2048 at 128 px)
    beta: float = 0.005  # KL weight against the summed squared error, as vae.py

    def validate(self) -> None:
        super().validate()
        p = self.patch_size
        if p < 1:
            raise ConfigError(f"vit_vae: patch_size must be a positive integer, got {p}.")
        if self.image_size % p:
            lower = max(p, self.image_size // p * p)
            raise ConfigError(
                f"vit_vae: image_size {self.image_size} is not a multiple of patch_size {p}; "
                f"use a multiple of {p} (e.g. {lower} or {lower + p}) or another patch_size."
            )
        if self.dim < 1 or self.heads < 1 or self.dim % self.heads:
            raise ConfigError(f"vit_vae: dim ({self.dim}) must be a positive multiple of heads ({self.heads}).")
        if self.depth < 1 or self.decoder_depth < 1:
            raise ConfigError(f"vit_vae: depth and decoder_depth must be >= 1, got {self.depth} and {self.decoder_depth}.")
        if self.latent_dim < 1:
            raise ConfigError(f"vit_vae: latent_dim must be a positive integer, got {self.latent_dim}.")
        if not self.beta >= 0 or not self.mlp_ratio > 0 or not 0 <= self.dropout < 1:
            raise ConfigError(
                f"vit_vae: need beta >= 0, mlp_ratio > 0 and dropout in [0, 1), got "
                f"{self.beta}, {self.mlp_ratio} and {self.dropout}."
            )


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p*p*C) tokens in row-major patch order, N = (H/p)(W/p)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)  # (B, C, gh, p, gw, p)
    x = x.permute(0, 2, 4, 3, 5, 1)  # (B, gh, gw, p, p, C)
    return x.reshape(b, (h // p) * (w // p), p * p * c)  # (B, N, p*p*C)


def unpatchify(tokens: torch.Tensor, p: int, channels: int, height: int, width: int) -> torch.Tensor:
    """Inverse of patchify: (B, N, p*p*C) -> (B, C, H, W)."""
    b = tokens.shape[0]
    x = tokens.reshape(b, height // p, width // p, p, p, channels)  # (B, gh, gw, p, p, C)
    x = x.permute(0, 5, 1, 3, 2, 4)  # (B, C, gh, p, gw, p)
    return x.reshape(b, channels, height, width)  # (B, C, H, W)


def _transformer(c: ViTVAEConfig, depth: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        d_model=c.dim, nhead=c.heads, dim_feedforward=int(c.mlp_ratio * c.dim), dropout=c.dropout,
        activation="gelu", batch_first=True, norm_first=True,
    )
    # Pre-norm blocks leave the residual stream un-normalised: close with a LayerNorm.
    # enable_nested_tensor only applies to post-norm with padding masks; off to avoid its warning.
    return nn.TransformerEncoder(layer, num_layers=depth, norm=nn.LayerNorm(c.dim), enable_nested_tensor=False)


class ViTVAE(VariationalModel):
    """Transformer VAE over patches with a per-token latent; reconstruct() decodes the mean."""

    config_class = ViTVAEConfig

    def __init__(self, config: ViTVAEConfig):
        super().__init__(config)
        c = config
        p = c.patch_size
        self.num_tokens = (c.image_size // p) ** 2
        patch_values = p * p * c.in_channels
        self.embed = nn.Linear(patch_values, c.dim)
        self.pos_enc = nn.Parameter(torch.zeros(1, self.num_tokens, c.dim))  # (1, N, dim)
        self.encoder = _transformer(c, c.depth)
        self.to_latent = nn.Linear(c.dim, 2 * c.latent_dim)  # mean and raw log-variance per token
        self.from_latent = nn.Linear(c.latent_dim, c.dim)
        self.pos_dec = nn.Parameter(torch.zeros(1, self.num_tokens, c.dim))  # (1, N, dim)
        self.decoder = _transformer(c, c.decoder_depth)
        self.to_pixels = nn.Linear(c.dim, patch_values)
        # ViT init: small random position embeddings (zeros would give every token the same start).
        nn.init.trunc_normal_(self.pos_enc, std=0.02)
        nn.init.trunc_normal_(self.pos_dec, std=0.02)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> mean and log-variance of q(z|x), each (B, N, latent_dim), float32."""
        c = self.config
        assert x.shape[1:] == (c.in_channels, c.image_size, c.image_size), (
            f"vit_vae was built for ({c.in_channels}, {c.image_size}, {c.image_size}) images, got {tuple(x.shape[1:])}"
        )
        tokens = self.embed(patchify(x, c.patch_size)) + self.pos_enc  # (B, N, dim)
        mu, raw = self.to_latent(self.encoder(tokens)).float().chunk(2, dim=-1)  # 2 x (B, N, latent_dim)
        return mu, bound_logvar(raw)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, N, latent_dim) -> (B, C, H, W) in [0, 1]."""
        c = self.config
        h = self.decoder(self.from_latent(z) + self.pos_dec)  # (B, N, dim)
        patches = self.to_pixels(h).sigmoid()  # (B, N, p*p*C)
        return unpatchify(patches, c.patch_size, c.in_channels, c.image_size, c.image_size)
