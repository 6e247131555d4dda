"""Heatmap images (pipeline/heatmaps.py): the map at the image's own size over the image, one colour
scale for every image of a run, the threshold's contour, a plain RGB PNG."""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from pipeline import heatmaps


def test_the_colour_scale_puts_the_threshold_in_the_middle():
    assert heatmaps.colour_scale(0.05) == 0.1
    assert heatmaps.colour_scale(math.nan) is None and heatmaps.colour_scale(0.0) is None
    assert heatmaps.COLOUR_TABLE.shape == (256, 3) and heatmaps.COLOUR_TABLE.dtype == np.uint8
    assert (np.diff(heatmaps.COLOUR_TABLE[::16].astype(int).sum(axis=1)) > 0).all()  # dark to bright


def test_overlay_keeps_normal_pixels_and_outlines_the_region_above_the_threshold():
    image = np.full((20, 30, 3), 100, np.uint8)
    amap = np.zeros((20, 30), np.float32)
    amap[5:10, 10:20] = 0.3  # above the threshold 0.1; the brightest colour at 2 x 0.1
    out = heatmaps.overlay(image, amap, threshold=0.1, scale=0.2)
    assert (out[amap == 0] == 100).all()  # a zero map leaves the image as it is
    edge = heatmaps.contour(amap > 0.1)
    assert edge.sum() == 2 * (5 + 10) - 4 and not edge[6:9, 11:19].any()  # the region's border, inside it
    assert (out[edge] == heatmaps.CONTOUR_COLOUR).all()
    top = np.round(100 * (1 - heatmaps.MAX_OPACITY) + heatmaps.COLOUR_TABLE[255] * heatmaps.MAX_OPACITY)
    assert (out[7, 15] == top).all()
    # One scale for every image: a map at a tenth of the threshold stays almost the image.
    faint = heatmaps.overlay(image, amap / 30, threshold=0.1, scale=0.2)
    assert np.abs(faint.astype(int) - 100).max() <= 10 and not heatmaps.contour(amap / 30 > 0.1).any()
    own = heatmaps.overlay(image, amap / 30, threshold=math.nan, scale=None)  # no threshold: its own maximum
    assert (own[7, 15] == top).all()


def test_write_heatmap_upsamples_the_map_to_the_images_own_size(tmp_path):
    image = np.zeros((3, 24, 40), np.uint8)  # (C, h, w), as decoded
    amap = torch.zeros(32, 32)
    amap[:, 16:] = 1.0  # the right half of the model's input
    heatmaps.write_heatmap(tmp_path / "a" / "x.png", image, amap, threshold=0.5, scale=1.0)
    with Image.open(tmp_path / "a" / "x.png") as im:
        assert im.size == (40, 24) and im.mode == "RGB"
        rgb = np.asarray(im)
    assert (rgb[:, :15] == 0).all() and (rgb[:, 25:] > 0).any(axis=2).all()  # the right half, at the image's size
    assert heatmaps.map_at_image_size(amap, (40, 24)).shape == (24, 40)
