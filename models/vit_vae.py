"""ViT-VAE: a variational autoencoder with a vision-transformer encoder and a per-token latent.

The image is cut into non-overlapping p x p patches (16 px at 128 -> 8 x 8 = 64 tokens; an
H x W input gives an H/p x W/p grid, 8 x 20 at 128 x 320), each flattened
(channel-agnostic: p*p*C values) and linearly embedded, plus a position embedding
(Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021), initialised to the fixed
2-D sin-cos table of MAE (He et al., CVPR 2022) and then learned: with a few hundred
training steps a random table would first have to learn where each token is.
Pre-norm self-attention blocks (``nn.TransformerEncoderLayer(norm_first=True)``, whose
attention runs through ``scaled_dot_product_attention``) encode the tokens; a linear head
gives, PER TOKEN, the mean and log-variance of a small latent, so the latent is a
(latent_dim, H/p, W/p) grid like VAE-GRF's map. z = mu + sigma * eps is decoded by

- ``decoder="conv"`` (default): the latent grid, optionally mixed by ``decoder_depth``
  transformer blocks, is upsampled by log2(p) transposed-convolution stages to pixels
  (the CNN models' decoder). Neighbouring patches share kernels, so there are no seams at
  patch borders and fine texture is rebuilt by convolution, not by one linear map per patch;
- ``decoder="linear"``: ``decoder_depth`` transformer blocks and a linear map back to patch
  pixels (the symmetric ViT-VAE; blocky, see bench/README.md "ViT-VAE").

Loss, weighted exactly as the other VAEs (``variational.py``) so the models are comparable::

    recon = sum_{c,h,w} (x - x_hat)^2                          per image, batch mean
    kl    = sum_{tokens, j} 1/2 (mu^2 + sigma^2 - 1 - log sigma^2)    KL(q || N(0, I))
    loss  = recon + beta * kl

(negative ELBO of a Gaussian decoder with pixel variance beta / 2; Kingma & Welling 2014).
The per-token latent_dim is the bottleneck (16 values for 768 pixel values of an RGB
16-px patch): narrow enough that a defect cannot be copied through, and the KL prices
every nat that goes through it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .base import ModelConfig
from .errors import ConfigError
from .layers import check_size_multiple, up_block
from .variational import VariationalModel, bound_logvar

DECODERS = ("conv", "linear")


@dataclass(kw_only=True)
class ViTVAEConfig(ModelConfig):
    patch_size: int = 16  # px per patch side; image_size must be a multiple (128 -> 64 tokens)
    dim: int = 128  # token width
    depth: int = 4  # encoder blocks
    heads: int = 4  # attention heads; dim must be divisible by heads (128 / 4 = 32 per head)
    mlp_ratio: float = 2.0  # MLP hidden width = mlp_ratio * dim
    dropout: float = 0.0  # no dropout: small data, few epochs, and eval must match training
    latent_dim: int = 16  # latent values per token (16 x 64 tokens = 1024 at 128 px)
    decoder: str = "conv"  # "conv": transposed convs from the token grid; "linear": patch head
    decoder_depth: int = 0  # transformer blocks before the decoder head (>= 1 for "linear")
    decoder_width: int = 128  # conv decoder: channels of its first stage, halved per stage (>= 16)
    beta: float = 0.005  # KL weight against the summed squared error, as vae.py
    # Initial bias of the raw log-variance head. 0 starts every posterior at sigma ~ 1, noise
    # that drowns the latent mean early on, so the decoder first learns to ignore z; -5 starts
    # nearly deterministic (sigma ~ 0.1) and the KL widens it where it can. Measured: lower
    # train MSE after 120 steps, detection within noise (bench/README.md, "ViT-VAE").
    logvar_init: float = -5.0

    def size_multiple(self) -> int:
        return self.patch_size

    def validate(self) -> None:
        super().validate()
        p = self.patch_size
        if not isinstance(p, int) or p < 1:
            raise ConfigError(f"vit_vae: patch_size must be a positive integer, got {p!r}.")
        check_size_multiple(self.image_size, p, model="vit_vae", what=f"patch_size {p}",
                            other="or another patch_size")
        if self.dim < 1 or self.heads < 1 or self.dim % self.heads:
            raise ConfigError(f"vit_vae: dim ({self.dim}) must be a positive multiple of heads ({self.heads}).")
        if self.decoder not in DECODERS:
            raise ConfigError(f"vit_vae: decoder {self.decoder!r} is unknown; valid: {', '.join(DECODERS)}.")
        if self.depth < 1 or self.decoder_depth < 0 or (self.decoder == "linear" and self.decoder_depth < 1):
            raise ConfigError(
                f"vit_vae: need depth >= 1 and decoder_depth >= 0 (>= 1 with decoder='linear'), "
                f"got {self.depth} and {self.decoder_depth}."
            )
        if self.decoder == "conv" and p & (p - 1):
            raise ConfigError(
                f"vit_vae: the conv decoder upsamples by 2 per stage, so patch_size must be a power of 2, "
                f"got {p}; use 8 or 16, or decoder='linear'."
            )
        if self.decoder == "conv" and self.decoder_width < 16:
            raise ConfigError(f"vit_vae: decoder_width must be >= 16, got {self.decoder_width}.")
        if self.latent_dim < 1:
            raise ConfigError(f"vit_vae: latent_dim must be a positive integer, got {self.latent_dim}.")
        if not abs(self.logvar_init) <= 10:  # also rejects NaN
            raise ConfigError(
                f"vit_vae: logvar_init must be in [-10, 10] (the log-variance bound), got {self.logvar_init}."
            )
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


def sincos_2d(rows: int, cols: int, dim: int) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos position table of a rows x cols token grid -> (rows*cols, dim),
    in patchify order (row-major).

    Half the channels encode the row, half the column, each as sin/cos at geometric
    frequencies 1 / 10000^(k / (dim/4)); channels beyond a multiple of 4 stay 0. Positions are
    absolute token indices, so a wide grid shares its first columns' codes with a square one.
    """
    q = dim // 4
    freq = 1.0 / 10000 ** (torch.arange(q, dtype=torch.float32) / max(q, 1))  # (q,)
    row_index, col_index = torch.meshgrid(torch.arange(rows, dtype=torch.float32),
                                          torch.arange(cols, dtype=torch.float32), indexing="ij")  # (rows, cols) each
    parts = [f(t.reshape(-1, 1) * freq) for t in (row_index, col_index) for f in (torch.sin, torch.cos)]
    table = torch.zeros(rows * cols, dim)
    table[:, : 4 * q] = torch.cat(parts, dim=1)  # (N, 4q)
    return table


def _transformer(c: ViTVAEConfig, depth: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        d_model=c.dim, nhead=c.heads, dim_feedforward=int(c.mlp_ratio * c.dim), dropout=c.dropout,
        activation="gelu", batch_first=True, norm_first=True,
    )
    # Pre-norm blocks leave the residual stream un-normalised: close with a LayerNorm.
    # enable_nested_tensor only applies to post-norm with padding masks; off to avoid its warning.
    return nn.TransformerEncoder(layer, num_layers=depth, norm=nn.LayerNorm(c.dim), enable_nested_tensor=False)


def conv_head(*, dim: int, out_channels: int, patch_size: int, width: int) -> nn.Sequential:
    """(B, dim, H/p, W/p) token grid -> (B, out_channels, H, W) in [0, 1] by log2(p) x2 stages.

    A 3x3 conv first mixes neighbouring tokens; stage i has max(16, width / 2^i) channels.
    """
    stages = int(math.log2(patch_size))
    chans = [max(16, width >> i) for i in range(stages)] or [width]
    layers: list[nn.Module] = [nn.Conv2d(dim, chans[0], 3, padding=1), nn.LeakyReLU(0.2, inplace=True)]
    layers += [up_block(a, b) for a, b in zip(chans[:-1], chans[1:])]  # each doubles the side
    if stages:  # the last doubling goes straight to pixels: no BatchNorm/activation before the sigmoid
        layers.append(nn.ConvTranspose2d(chans[-1], out_channels, kernel_size=4, stride=2, padding=1))
    else:  # patch_size 1: the grid is already the image
        layers.append(nn.Conv2d(chans[-1], out_channels, 3, padding=1))
    return nn.Sequential(*layers, nn.Sigmoid())


class ViTVAE(VariationalModel):
    """Transformer-encoder VAE over patches with a per-token latent; reconstruct() decodes the mean."""

    config_class = ViTVAEConfig
    label = "ViT-VAE"

    def __init__(self, config: ViTVAEConfig):
        super().__init__(config)
        c = config
        p = c.patch_size
        self.grid = (c.height // p, c.width // p)  # (rows, cols) of the token grid
        patch_values = p * p * c.in_channels
        self.embed = nn.Linear(patch_values, c.dim)
        self.pos_enc = nn.Parameter(sincos_2d(*self.grid, c.dim).unsqueeze(0))  # (1, N, dim)
        self.encoder = _transformer(c, c.depth)
        self.to_latent = nn.Linear(c.dim, 2 * c.latent_dim)  # mean and raw log-variance per token
        nn.init.constant_(self.to_latent.bias[c.latent_dim:], c.logvar_init)
        self.from_latent = nn.Linear(c.latent_dim, c.dim)
        self.pos_dec = self.decoder = None
        if c.decoder_depth:  # the conv head knows positions from the grid; a transformer needs them
            self.pos_dec = nn.Parameter(sincos_2d(*self.grid, c.dim).unsqueeze(0))  # (1, N, dim)
            self.decoder = _transformer(c, c.decoder_depth)
        if c.decoder == "conv":
            self.head = conv_head(dim=c.dim, out_channels=c.in_channels, patch_size=p, width=c.decoder_width)
        else:
            self.head = nn.Linear(c.dim, patch_values)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> mean and log-variance of q(z|x), each (B, N, latent_dim), float32."""
        c = self.config
        assert x.shape[1:] == (c.in_channels, c.height, c.width), (
            f"vit_vae was built for ({c.in_channels}, {c.height}, {c.width}) images, got {tuple(x.shape[1:])}"
        )
        tokens = self.embed(patchify(x, c.patch_size)) + self.pos_enc  # (B, N, dim)
        mu, raw = self.to_latent(self.encoder(tokens)).float().chunk(2, dim=-1)  # 2 x (B, N, latent_dim)
        return mu, bound_logvar(raw)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, N, latent_dim) -> (B, C, H, W) in [0, 1]."""
        c = self.config
        h = self.from_latent(z)  # (B, N, dim)
        if self.decoder is not None:
            h = self.decoder(h + self.pos_dec)  # (B, N, dim)
        if c.decoder == "linear":
            patches = self.head(h).sigmoid()  # (B, N, p*p*C)
            return unpatchify(patches, c.patch_size, c.in_channels, c.height, c.width)
        grid = h.transpose(1, 2).reshape(h.shape[0], c.dim, *self.grid)  # (B, dim, H/p, W/p)
        return self.head(grid)  # (B, C, H, W)
