"""Batches for training and evaluation: float batches on the device from a split's uint8 tensor.

A split's images are one decoded uint8 tensor (``ds.images``, N x C x H x W, ``MVTecAD``).
``BatchSource`` gathers a batch of it by index, moves it to the device and converts it to
float there; ``batch_indices`` says which indices make each batch (a seeded permutation in
training, in order in evaluation); ``autocast`` is the one bf16 rule of both; and
``prefers_channels_last`` the one rule for the NHWC layout. No ``DataLoader``, no per-item
PIL or Python per-sample code: at these sizes a split is a few MB and batching it by
indexing costs microseconds (bench/README.md, "Speed").
"""
from __future__ import annotations

import torch
from torch import nn


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in model.modules())


def prefers_channels_last(model: nn.Module, device: torch.device) -> bool:
    """NHWC for the models with convolutions on CUDA and CPU: their convolutions (cuDNN,
    oneDNN) are faster in it (bench/README.md, "Speed")."""
    return has_conv(model) and device.type in ("cuda", "cpu")


class BatchSource:
    """Float batches on ``device`` from a uint8 (N, C, S, S) CPU tensor, by index.

    On CUDA the uint8 tensor lives on the GPU when it takes under a quarter of the free
    memory (MVTec at 256 px: ~80 MB), so a batch is one on-device gather; otherwise each
    batch is gathered into a pinned buffer and copied non-blocking.
    """

    def __init__(self, images: torch.Tensor, device: torch.device, *, channels_last: bool = False):
        assert images.dtype == torch.uint8 and images.ndim == 4, (
            f"expected uint8 (N, C, S, S), got {images.dtype} {tuple(images.shape)}"
        )
        self.device, self.channels_last = device, channels_last
        self.staging = None
        if device.type == "cuda" and images.numel() > torch.cuda.mem_get_info(device)[0] // 4:
            self.images = images if images.is_pinned() else images.pin_memory()
        else:
            self.images = images.to(device)

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        if self.images.device != self.device:  # pinned host memory -> device, non-blocking
            if self.staging is None or self.staging.shape[0] < idx.numel():
                self.staging = torch.empty((idx.numel(), *self.images.shape[1:]), dtype=torch.uint8).pin_memory()
            x = torch.index_select(self.images, 0, idx, out=self.staging[: idx.numel()])
            x = x.to(self.device, non_blocking=True)
        else:
            # non_blocking: a blocking host->GPU copy would wait for the queued steps (no overlap).
            x = self.images[idx.to(self.device, non_blocking=True)]
        x = x.float().div_(255.0)  # (B, C, S, S) in [0, 1]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def batch_indices(n: int, batch_size: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Index batches of a (seeded) permutation of range(n); in training (``generator`` given),
    a trailing batch of 1 is dropped when the others are larger: its batch statistics would be
    one image's (the image comes back in another epoch's order; results depend on this rule).
    With batch_size 1 every batch is one image and nothing is dropped."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    batches = list(order.split(batch_size))
    if len(batches) > 1 and batches[-1].numel() == 1 and batch_size > 1 and generator is not None:
        batches.pop()
    return batches


def autocast(device: torch.device, amp: bool):
    # bf16 needs no loss scaling; only CUDA gets it (CPU autocast is slower for these convs).
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and amp)
