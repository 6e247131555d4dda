"""Batched training augmentation, applied on the device to a whole (B, C, H, W) batch.

Only transformations that map a NORMAL image to another plausible normal image are offered,
since the model learns "normal" from them: for a texture (grid, carpet, wood ...) a mirror
image or a quarter turn is still defect-free texture, so these multiply a small training set
by up to 8 (the dihedral group of the square) without inventing anything. For most objects
they are wrong (a mirrored transistor or a rotated screw IS an anomaly in MVTec AD), which is
why augmentation is off unless asked for (``TrainConfig.augment``).

Modes:
- ``"none"``: the batch unchanged;
- ``"flip"``: each image independently mirrored left-right and/or top-bottom (p = 1/2 each);
- ``"dihedral"``: "flip" plus a random quarter turn (0, 90, 180, 270 degrees), i.e. a uniform
  element of the 8 symmetries of the square. A rectangle (H != W, ``--aspect keep``) has no
  quarter turns: there it is "flip", its 4 symmetries, and the grid says so once per category.

Each image draws its own transformation from torch's global RNG (seeded by
``pipeline.train.seed_everything``), with a handful of whole-tensor ops per batch, no Python loop
over samples.
"""
from __future__ import annotations

import torch

AUGMENTATIONS = ("none", "flip", "dihedral")


def augment_batch(x: torch.Tensor, mode: str = "none") -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W), each image transformed by its own random symmetry."""
    if mode == "none":
        return x
    if mode not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {mode!r}; valid: {', '.join(AUGMENTATIONS)}")
    b = x.shape[0]
    fmt = (torch.channels_last
           if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
           else torch.contiguous_format)
    draw = torch.randint(0, 4, (3, b), device=x.device)  # (3, B): flip-lr, flip-ud, quarter turns
    pick = lambda m: m.view(b, 1, 1, 1)  # (B,) bool -> broadcast over (C, H, W)
    x = torch.where(pick(draw[0] % 2 == 1), x.flip(-1), x)
    x = torch.where(pick(draw[1] % 2 == 1), x.flip(-2), x)
    if mode == "dihedral" and x.shape[-1] == x.shape[-2]:
        # A transpose composed with the flips above gives the quarter turns: flip + transpose
        # = rot90, so transposing half of the images completes the group of 8.
        x = torch.where(pick(draw[2] % 2 == 1), x.transpose(-1, -2), x)
    return x.contiguous(memory_format=fmt)  # the transpose leaves odd strides; keep the batch's layout
