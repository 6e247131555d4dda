"""Convolutional blocks shared by the CNN models (CAE, VAE, VAE-GRF).

The encoder halves the resolution and widens the channels at every stage
(Conv-BN-LeakyReLU, stride 2); the decoder mirrors it with transposed convolutions and
ends in a sigmoid so reconstructions live in [0, 1] like the images. CAE and VAE put a
dense bottleneck vector between the two (MapToVector / VectorToMap); ``check_conv_size``
is the shared image-size check.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import ImageSize, image_hw, size_label
from .errors import ConfigError


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that also trains on ONE value per channel, where torch raises
    "Expected more than 1 value per channel when training": a batch of one image at a 1x1
    map (the CAE's and VAE's last encoder stage at image_size = 16 px, batch_size 1). There it
    normalises with its running statistics, as in evaluation, since one value has no batch
    variance; with batch size 1 throughout, those stay at their start (mean 0, variance 1),
    so training and evaluation agree. Every other input goes to ``nn.BatchNorm2d`` unchanged:
    same weights, same state_dict keys, same results at every other size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


def down_block(in_ch: int, out_ch: int) -> nn.Sequential:
    """(B, in_ch, H, W) -> (B, out_ch, H/2, W/2)."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1, bias=False),
        BatchNorm2d(out_ch),
        nn.LeakyReLU(0.2, inplace=True),
    )


def up_block(in_ch: int, out_ch: int) -> nn.Sequential:
    """(B, in_ch, H, W) -> (B, out_ch, 2H, 2W)."""
    return nn.Sequential(
        nn.ConvTranspose2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1, bias=False),
        BatchNorm2d(out_ch),
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


def check_conv_size(image_size: ImageSize, widths: tuple[int, ...], *, model: str) -> None:
    """Raise ConfigError unless ConvEncoder(widths) can take ``image_size`` images (S or (H, W)).

    Each stage halves both sides, so each must be a multiple of 2**len(widths).
    """
    if len(widths) == 0 or any(int(w) != w or w < 1 for w in widths):
        raise ConfigError(f"{model}: widths must be a non-empty tuple of positive integers, got {widths!r}.")
    stride = 2 ** len(widths)
    check_size_multiple(image_size, stride, model=model,
                        what=f"{stride}, the stride of its {len(widths)} encoder stages (widths={tuple(widths)})",
                        other="or change widths")


def check_size_multiple(image_size: ImageSize, multiple: int, *, model: str, what: str, other: str) -> None:
    """Raise ConfigError unless both sides of ``image_size`` are multiples of ``multiple``; the
    message names sizes that work so the user can pick one."""
    bad = [side for side in dict.fromkeys(image_hw(image_size)) if side % multiple]
    if not bad:
        return
    lower = max(multiple, bad[0] // multiple * multiple)
    examples = sorted({lower, lower + multiple, *(s for s in (64, 128, 256) if s % multiple == 0)})
    side = "" if isinstance(image_size, int) else f" ({'height' if bad[0] == image_hw(image_size)[0] else 'width'})"
    raise ConfigError(
        f"{model}: image_size {size_label(image_size)}{side} is not a multiple of {what}; valid sizes are "
        f"multiples of {multiple}, e.g. {', '.join(map(str, examples))}, {other}."
    )


class MapToVector(nn.Module):
    """Dense bottleneck in: (B, C, h, w) feature map -> (B, out_features) vector."""

    def __init__(self, *, channels: int, size: tuple[int, int], out_features: int):
        super().__init__()
        self.linear = nn.Linear(channels * size[0] * size[1], out_features)  # size: (h, w) of the map
        self.size = tuple(size)

    def forward(self, h):
        # A transposed input (W x H) has as many values and would pass the dense layer silently.
        assert tuple(h.shape[-2:]) == self.size, (
            f"expected a {self.size[0]}x{self.size[1]} feature map, got {tuple(h.shape[-2:])}: the input is not "
            "the size the model was built for"
        )
        return self.linear(h.flatten(1))  # (B, C*h*w) -> (B, out_features)


class VectorToMap(nn.Module):
    """Dense bottleneck out: (B, in_features) vector -> (B, C, h, w) map for ConvDecoder.

    The LeakyReLU keeps the dense layer and the first transposed convolution from
    collapsing into one linear map.
    """

    def __init__(self, *, in_features: int, channels: int, size: tuple[int, int]):
        super().__init__()
        self.shape = (channels, *size)  # size: (h, w) of the map
        self.linear = nn.Linear(in_features, channels * size[0] * size[1])
        self.act = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, z):
        return self.act(self.linear(z)).view(z.shape[0], *self.shape)  # (B, C, h, w)
