"""Convolutional blocks shared by the CNN models (CAE, VAE, VAE-GRF).

The encoder halves the resolution and widens the channels at every stage
(Conv-BN-LeakyReLU, stride 2); the decoder mirrors it with transposed convolutions and
ends in a sigmoid so reconstructions live in [0, 1] like the images.
"""
from __future__ import annotations

from torch import nn


def down_block(in_ch: int, out_ch: int) -> nn.Sequential:
    """(B, in_ch, H, W) -> (B, out_ch, H/2, W/2)."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.LeakyReLU(0.2, inplace=True),
    )


def up_block(in_ch: int, out_ch: int) -> nn.Sequential:
    """(B, in_ch, H, W) -> (B, out_ch, 2H, 2W)."""
    return nn.Sequential(
        nn.ConvTranspose2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.LeakyReLU(0.2, inplace=True),
    )


class ConvEncoder(nn.Module):
    """Image -> feature map: len(widths) stride-2 stages, so the map is H / 2**len(widths)."""

    def __init__(self, *, in_channels: int, widths: tuple[int, ...]):
        super().__init__()
        chans = (in_channels, *widths)
        self.stages = nn.Sequential(*(down_block(a, b) for a, b in zip(chans[:-1], chans[1:])))
        self.out_channels = widths[-1]
        self.stride = 2 ** len(widths)

    def forward(self, x):
        return self.stages(x)  # (B, widths[-1], H / stride, W / stride)


class ConvDecoder(nn.Module):
    """Feature map -> image in [0, 1]: the mirror of ConvEncoder(widths)."""

    def __init__(self, *, out_channels: int, widths: tuple[int, ...]):
        super().__init__()
        chans = tuple(reversed(widths))  # e.g. (256, 128, 64, 32)
        self.stages = nn.Sequential(*(up_block(a, b) for a, b in zip(chans[:-1], chans[1:])))
        # The last stage goes straight to pixels: no BatchNorm/activation before the sigmoid.
        self.to_pixels = nn.ConvTranspose2d(chans[-1], out_channels, kernel_size=4, stride=2, padding=1)

    def forward(self, h):
        return self.to_pixels(self.stages(h)).sigmoid()  # (B, out_channels, H, W)
