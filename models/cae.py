"""Convolutional autoencoder (CAE) with a dense bottleneck vector.

x -> ConvEncoder (stride-2 Conv-BN-LeakyReLU stages) -> dense -> z (latent_dim)
  -> dense -> mirrored ConvDecoder -> sigmoid -> x_hat in [0, 1].

Trained on normal images only with the pixel-wise MSE; the narrow bottleneck keeps it from
learning the identity, so a defect it never saw is reconstructed as "normal" and shows up in
the residual (Masci et al., "Stacked Convolutional Auto-Encoders", ICANN 2011; used for
anomaly detection e.g. in Bergmann et al., VISAPP 2019).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import AnomalyModel, ModelConfig, loss_target
from .errors import ConfigError
from .layers import ConvDecoder, ConvEncoder, MapToVector, VectorToMap, check_conv_size


@dataclass(kw_only=True)
class CAEConfig(ModelConfig):
    # Channels of the encoder stages; each halves the side, so 4 stages = stride 16
    # (128 px -> 8x8 map). The decoder mirrors them.
    widths: tuple[int, ...] = (32, 64, 128, 256)
    # Size of the bottleneck vector z. Small enough that the CAE cannot copy a defect
    # through, large enough to keep texture detail: 128 for 64-256 px.
    latent_dim: int = 128

    def __post_init__(self):
        super().__post_init__()
        self.widths = tuple(self.widths)  # a JSON round trip turns tuples into lists

    def size_multiple(self) -> int:
        return 2 ** len(self.widths)

    def validate(self) -> None:
        super().validate()
        check_conv_size(self.image_size, self.widths, model="cae")
        if self.latent_dim < 1:
            raise ConfigError(f"cae: latent_dim must be a positive integer, got {self.latent_dim}.")


class CAE(AnomalyModel):
    """Deterministic autoencoder; loss = mean squared error per pixel."""

    config_class = CAEConfig
    label = "CAE"

    def __init__(self, config: CAEConfig):
        super().__init__(config)
        c = config
        self.encoder = ConvEncoder(in_channels=c.in_channels, widths=c.widths)
        size = (c.height // self.encoder.stride, c.width // self.encoder.stride)  # (h, w) of the encoder's map
        self.to_latent = MapToVector(channels=c.widths[-1], size=size, out_features=c.latent_dim)
        self.from_latent = VectorToMap(in_features=c.latent_dim, channels=c.widths[-1], size=size)
        self.decoder = ConvDecoder(out_channels=c.in_channels, widths=c.widths)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_latent(self.encoder(x))  # (B, latent_dim)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.from_latent(z))  # (B, C, H, W) in [0, 1]

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def loss(self, x: torch.Tensor, target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        target = loss_target(x, target)  # the clean image in repair training, else x
        recon = F.mse_loss(self.reconstruct(x).float(), target.float())  # mean over B, C, H, W
        return {"loss": recon, "recon": recon.detach()}
