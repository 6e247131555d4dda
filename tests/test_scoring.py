"""Tests of models/scoring.py: anomaly maps from (x, x_hat) and their image-level reductions."""
from __future__ import annotations

import pytest
import torch

import models
from helpers import TINY
from models import scoring


def _pair(b=2, c=3, s=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, s, s, generator=gen), torch.rand(b, c, s, s, generator=gen)


def test_l2_map_is_channel_mean_of_squared_residual():
    x, y = _pair()
    m = scoring.anomaly_map(x, y, score_map="l2", score_sigma=0)
    assert m.shape == (2, 32, 32)
    assert torch.allclose(m, ((x - y) ** 2).mean(dim=1))
    # Its mean is the classic ||x - x_hat||^2 / (C H W).
    assert torch.allclose(scoring.reduce_map(m, score_reduce="mean"), ((x - y) ** 2).flatten(1).mean(1))


@pytest.mark.parametrize("channels", [1, 3])
def test_maps_of_identical_images_are_zero(channels):
    x, _ = _pair(c=channels)
    for sigma in (0.0, 4.0):
        assert torch.allclose(scoring.anomaly_map(x, x, score_map="ssim", score_sigma=sigma), torch.zeros(2, 32, 32),
                              atol=1e-5)
        assert torch.equal(scoring.anomaly_map(x, x, score_map="l2", score_sigma=sigma), torch.zeros(2, 32, 32))


def test_ssim_map_is_bounded_and_grows_with_distortion():
    x, noise = _pair(seed=1)
    small = scoring.anomaly_map(x, (x + 0.05 * (noise - 0.5)).clamp(0, 1), score_map="ssim")
    large = scoring.anomaly_map(x, (x + 0.5 * (noise - 0.5)).clamp(0, 1), score_map="ssim")
    for m in (small, large):
        assert m.shape == (2, 32, 32) and (m >= 0).all() and (m <= 1).all()
    assert large.mean() > small.mean()


def test_smoothing_keeps_mass_and_spreads_a_spike():
    m = torch.zeros(1, 1, 64, 64)
    m[0, 0, 32, 32] = 1.0
    blurred = scoring.gaussian_blur(m, 4.0)
    assert blurred.shape == m.shape
    assert abs(blurred.sum().item() - 1.0) < 1e-4  # away from the border the kernel sums to 1
    assert blurred.max() < 0.02 and blurred[0, 0, 32, 32] == blurred.max()
    # Symmetric padding keeps the mass of a residual at the border too (not inflated by it).
    for where in [(0, 0), (1, 1), (63, 5), (2, 62)]:
        edge = torch.zeros(1, 1, 64, 64)
        edge[(0, 0, *where)] = 1.0
        assert abs(scoring.gaussian_blur(edge, 4.0).sum().item() - 1.0) < 1e-4, where
    # Through anomaly_map: smoothing a random residual keeps its total (mean) roughly.
    x, y = _pair(s=64)
    raw = scoring.anomaly_map(x, y, score_sigma=0)
    smooth = scoring.anomaly_map(x, y, score_sigma=4)
    assert torch.allclose(smooth.mean(dim=(1, 2)), raw.mean(dim=(1, 2)), rtol=0.02)
    assert smooth.std() < raw.std()
    assert torch.equal(scoring.gaussian_blur(m, 0.0), m)  # sigma 0 = off


def test_smoothing_tiny_maps_does_not_crash():
    m = torch.rand(2, 1, 4, 4)  # smaller than the kernel radius: replicate padding
    assert scoring.gaussian_blur(m, 4.0).shape == m.shape


def test_reductions():
    maps = torch.zeros(2, 10, 10)
    maps[0, 0, :5] = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    maps[1] = 1.0
    assert torch.allclose(scoring.reduce_map(maps, score_reduce="mean"), torch.tensor([0.15, 1.0]))
    assert torch.allclose(scoring.reduce_map(maps, score_reduce="max"), torch.tensor([5.0, 1.0]))
    # top 3 % of 100 px = 3 px -> mean of 5, 4, 3
    assert torch.allclose(scoring.reduce_map(maps, score_reduce="topk", score_topk=0.03), torch.tensor([4.0, 1.0]))
    # at least one pixel, however small the fraction
    assert torch.allclose(scoring.reduce_map(maps, score_reduce="topk", score_topk=1e-6), torch.tensor([5.0, 1.0]))
    assert torch.allclose(scoring.reduce_map(maps, score_reduce="topk", score_topk=1.0),
                          scoring.reduce_map(maps, score_reduce="mean"))


@pytest.mark.parametrize("score_map", ["l2", "ssim"])
@pytest.mark.parametrize("score_sigma", [0.0, 4.0])
@pytest.mark.parametrize("score_reduce", ["mean", "max", "topk"])
def test_larger_residual_gives_larger_score(score_map, score_sigma, score_reduce):
    gen = torch.Generator().manual_seed(0)
    x = 0.3 + 0.4 * torch.rand(1, 3, 32, 32, generator=gen)
    x_hats = []
    for amp in (0.1, 0.2, 0.4):  # the same defect patch, ever stronger
        x_hat = x.clone()
        x_hat[:, :, 10:18, 10:18] += amp
        x_hats.append(x_hat)
    maps = scoring.anomaly_map(x.expand(3, -1, -1, -1), torch.cat(x_hats), score_map=score_map, score_sigma=score_sigma)
    scores = scoring.reduce_map(maps, score_reduce=score_reduce, score_topk=0.05)
    assert scores[0] < scores[1] < scores[2]


def test_map_is_float32_for_low_precision_inputs():
    x, y = _pair()
    m = scoring.anomaly_map(x.bfloat16(), y.bfloat16())
    assert m.dtype == torch.float32


def test_unknown_names_raise():
    x, y = _pair()
    with pytest.raises(ValueError, match="l2"):
        scoring.anomaly_map(x, y, score_map="l1")
    with pytest.raises(ValueError, match="topk"):
        scoring.reduce_map(x[:, 0], score_reduce="median")


def test_describe():
    assert scoring.describe("l2", 4.0, "max", 0.01) == "l2|sigma4|max"
    assert scoring.describe("ssim", 0.0, "topk", 0.01) == "ssim|sigma0|top0.01"


def test_blur_matches_scipy_gaussian_filter():
    from scipy.ndimage import gaussian_filter

    x = torch.rand(1, 1, 40, 50, generator=torch.Generator().manual_seed(3))
    ours = scoring.gaussian_blur(x, 4.0)[0, 0].numpy()
    ref = gaussian_filter(x[0, 0].numpy(), 4.0, mode="reflect", truncate=3.0)  # scipy's reflect = symmetric
    assert abs(ours - ref).max() < 1e-5


def test_maps_are_float32_under_autocast():
    torch.manual_seed(0)
    m = models.build_model("cae", image_size=32, **TINY["cae"]).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = m.anomaly_map(x)
        scores = m.anomaly_score(x)
        x_hat = m.reconstruct(x)
        assert x_hat.dtype == torch.bfloat16  # the network itself did run in bf16
        blurred = scoring.anomaly_map(x, x_hat, score_sigma=4.0)
    assert maps.dtype == scores.dtype == blurred.dtype == torch.float32
    assert torch.equal(blurred, scoring.anomaly_map(x, x_hat, score_sigma=4.0))  # as if autocast were off
    assert maps.unique().numel() > 1000  # not a few hundred bf16 levels
