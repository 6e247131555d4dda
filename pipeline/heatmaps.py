"""Heatmap images: an anomaly map over its image, at the image's own size, with the threshold's contour.

The map (at the model's input size) is upsampled bilinearly to the image's own height and
width, as the pixel metrics' ``eval_size="original"`` does (``evaluate.maps_at``), coloured
through a fixed lookup table and blended over the image, more opaque where the map is higher;
the pixels where the map crosses the row's threshold are outlined. Colours are on one scale for
every image of a run (0 to twice the threshold, so the threshold is the middle colour): a
normal image stays dark, as it would not under a per-image scale. Everything is numpy on
uint8 arrays written by PIL, no figure per image, so drawing stays a small part of a run
(bench/README.md, "Predict").
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from .evaluate import maps_at

# A dark-to-bright colour scale (black, purple, red, orange, pale yellow: inferno-like), as
# (position, R, G, B); its 256-entry table is what each map value is looked up in.
COLOUR_STOPS = np.array([
    (0.00, 0, 0, 4), (0.25, 87, 16, 110), (0.50, 188, 55, 84), (0.75, 249, 142, 9), (1.00, 252, 255, 164),
])
COLOUR_TABLE = np.stack([np.interp(np.linspace(0, 1, 256), COLOUR_STOPS[:, 0], COLOUR_STOPS[:, c])
                         for c in (1, 2, 3)], axis=1).round().astype(np.uint8)  # (256, 3)
MAX_OPACITY = 0.75  # of the colour where the map is at the top of the scale; 0 where it is 0
CONTOUR_COLOUR = (0, 255, 255)  # cyan: apart from every colour of the table
# zlib's fastest level: writing the PNG is most of a heatmap's cost, and PIL's default (6) is slower
# for files only slightly smaller (bench/bench_predict.py)
PNG_COMPRESS_LEVEL = 1


def colour_scale(threshold: float) -> float | None:
    """The map value drawn in the brightest colour: twice the threshold; None (each image's own
    maximum) when there is no usable threshold."""
    return 2.0 * threshold if math.isfinite(threshold) and threshold > 0 else None


def map_at_image_size(amap: torch.Tensor, original_size: tuple[int, int]) -> np.ndarray:
    """A (H, W) map at the model's size -> float32 (h, w) at the image's own (width, height)."""
    return maps_at(amap[None], "original", [original_size])[0]


def contour(above: np.ndarray, width: int = 1) -> np.ndarray:
    """The boundary pixels (bool (h, w)) of the region ``above``, ``width`` px wide inside it."""
    if not above.any():
        return above
    inner = ndimage.binary_erosion(above, iterations=width, border_value=1)
    return above & ~inner


def overlay(image: np.ndarray, amap: np.ndarray, *, threshold: float, scale: float | None) -> np.ndarray:
    """uint8 (h, w, 3): ``amap`` (float (h, w)) coloured over ``image`` (uint8 (h, w, 3)), the
    region above ``threshold`` outlined; ``scale``: the map value of the brightest colour
    (``colour_scale``), None for the map's own maximum."""
    top = scale if scale is not None else float(amap.max())
    level = np.clip(amap / top, 0.0, 1.0) if top > 0 else np.zeros_like(amap)  # (h, w) in [0, 1]
    colour = COLOUR_TABLE[(level * 255).astype(np.uint8)]  # (h, w, 3)
    alpha = (MAX_OPACITY * level)[..., None]
    out = (image * (1.0 - alpha) + colour * alpha).round().astype(np.uint8)
    if math.isfinite(threshold):
        out[contour(amap > threshold, width=max(1, min(amap.shape) // 256))] = CONTOUR_COLOUR
    return out


def write_heatmap(path: Path, image: np.ndarray, amap: torch.Tensor, *, threshold: float,
                  scale: float | None) -> None:
    """The heatmap PNG of one image (uint8 (3, h, w), as decoded) and its map at the model's size."""
    height, width = image.shape[-2:]
    rgb = overlay(image.transpose(1, 2, 0), map_at_image_size(amap, (width, height)), threshold=threshold,
                  scale=scale)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, compress_level=PNG_COMPRESS_LEVEL)
