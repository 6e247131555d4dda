"""Tests of models/scoring.py: anomaly maps from (x, x_hat) and their image-level reductions."""
from __future__ import annotations

import pytest
import torch

import models
from helpers import TINY
from models import scoring
from models.errors import ConfigError


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


@pytest.mark.parametrize("score_map", scoring.SCORE_MAPS)
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


# ---------------------------------------------------------------- MSGMS (multi-scale gradient-magnitude similarity)


@pytest.mark.parametrize("score_map", ["msgms", "l2msgms"])
@pytest.mark.parametrize("channels", [1, 3])
def test_msgms_maps_of_identical_images_are_zero(score_map, channels):
    x, _ = _pair(c=channels)
    for sigma in (0.0, 4.0):
        m = scoring.anomaly_map(x, x, score_map=score_map, score_sigma=sigma)
        assert m.shape == (2, 32, 32) and torch.equal(m, torch.zeros(2, 32, 32))


def test_msgms_of_a_step_edge_is_the_gms_formula_with_its_constant():
    """One scale by hand: a vertical step of height h against a flat image. The Prewitt
    filters (each / 3) give gradient magnitude h on the two columns beside the step and 0
    elsewhere, so 1 - GMS = 1 - c / (h^2 + c) there (c = 0.0026) and 0 everywhere else."""
    h = 0.5
    x = torch.zeros(1, 1, 16, 16)
    x[..., 8:] = h
    m = scoring.msgms_map(x, torch.zeros_like(x), scales=1)[0]
    expected = torch.zeros(16, 16)
    expected[:, 7:9] = 1 - scoring.GMS_C / (h * h + scoring.GMS_C)
    assert torch.allclose(m, expected, atol=1e-6)
    assert scoring.GMS_C == 0.0026
    # Channels are averaged to gray first: the step in one of three channels is a step of h / 3.
    rgb = torch.zeros(1, 3, 16, 16)
    rgb[:, 0, :, 8:] = h
    gray = scoring.msgms_map(rgb, torch.zeros_like(rgb), scales=1)[0]
    assert torch.allclose(gray[0, 7], torch.tensor(1 - scoring.GMS_C / ((h / 3) ** 2 + scoring.GMS_C)))


@pytest.mark.parametrize("score_map", ["msgms", "l2msgms"])
def test_msgms_map_peaks_at_a_local_change(score_map):
    gen = torch.Generator().manual_seed(2)
    x = 0.3 + 0.4 * torch.rand(2, 3, 64, 64, generator=gen)
    y = x.clone()
    y[:, :, 20:28, 40:48] = 0.9  # a bright square the reconstruction added
    m = scoring.anomaly_map(x, y, score_map=score_map, score_sigma=4.0)
    for image in m:
        row, col = divmod(int(image.argmax()), 64)
        assert 16 <= row < 32 and 36 <= col < 52, (row, col)
        assert image[:8, :8].max() < 0.05 * image.max()  # far from the change: (almost) nothing


def test_msgms_ignores_a_uniform_brightness_change_that_l2_sees():
    x, _ = _pair(seed=4)
    x = 0.2 + 0.5 * x
    brighter = x + 0.2  # no clipping: every gradient is the same
    assert scoring.anomaly_map(x, brighter, score_map="msgms").max() < 1e-5
    assert scoring.anomaly_map(x, brighter, score_map="l2").min() > 0.03


def test_l2msgms_is_the_geometric_mean_of_the_two_maps():
    x, y = _pair(seed=5)
    l2 = scoring.anomaly_map(x, y, score_map="l2")
    msgms = scoring.anomaly_map(x, y, score_map="msgms")
    assert torch.allclose(scoring.anomaly_map(x, y, score_map="l2msgms"), (l2 * msgms).sqrt())
    assert ((msgms >= 0) & (msgms <= 1)).all()


@pytest.mark.parametrize("score_map", ["msgms", "l2msgms"])
@pytest.mark.parametrize("hw", [(32, 32), (32, 80), (80, 32), (16, 16), (16, 24), (13, 7), (1, 1)])
def test_msgms_map_shape_for_square_rectangular_and_tiny_inputs(score_map, hw):
    """At 16 px the 1/8 scale is 2 x 2 px; odd sides and a 1-px image pool too (ceil_mode)."""
    gen = torch.Generator().manual_seed(6)
    x, y = torch.rand(2, 3, *hw, generator=gen), torch.rand(2, 3, *hw, generator=gen)
    for sigma in (0.0, 4.0):
        m = scoring.anomaly_map(x, y, score_map=score_map, score_sigma=sigma)
        assert m.shape == (2, *hw) and m.dtype == torch.float32 and torch.isfinite(m).all() and (m >= 0).all()


@pytest.mark.parametrize("score_map", ["msgms", "l2msgms"])
def test_msgms_map_is_float32_under_bf16_autocast(score_map):
    torch.manual_seed(0)
    m = models.build_model("cae", image_size=32, **TINY["cae"]).eval()
    x = torch.rand(2, 3, 32, 32)
    score = scoring.ScoreConfig.parse(f"{score_map}/4/top0.01")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = m.anomaly_map(x, score)
        scores = m.anomaly_score(x, score)
        x_hat = m.reconstruct(x)
        assert x_hat.dtype == torch.bfloat16
        direct = scoring.anomaly_map(x.bfloat16(), x_hat, score_map=score_map, score_sigma=4.0)
    assert maps.dtype == scores.dtype == direct.dtype == torch.float32
    assert torch.equal(direct, scoring.anomaly_map(x.bfloat16(), x_hat, score_map=score_map, score_sigma=4.0))
    assert maps.unique().numel() > 1000  # not a few hundred bf16 levels


@pytest.mark.parametrize("text,name", [("msgms/4/top0.01", "msgms|sigma4|top0.01"),
                                       ("msgms/4/mean", "msgms|sigma4|mean"), ("msgms/0/max", "msgms|sigma0|max"),
                                       ("l2msgms/4/top0.05", "l2msgms|sigma4|top0.05")])
def test_msgms_rules_parse_and_round_trip(text, name):
    score = scoring.ScoreConfig.parse(text)
    assert score.name == name
    assert scoring.ScoreConfig.parse(name.replace("|sigma", "/").replace("|", "/")) == score
    assert score.to_dict()["score_map"] == text.split("/")[0]


@pytest.mark.parametrize("text", ["gms/4/max", "msgm/4/top0.01"])
def test_an_unknown_map_is_one_sentence_naming_msgms(text):
    with pytest.raises(ConfigError) as info:
        scoring.ScoreConfig.parse(text)
    message = str(info.value)
    assert message.startswith(f"score_map {text.split('/')[0]!r} is unknown") and message.count(". ") == 0
    assert "msgms" in message and "l2msgms" in message and "\n" not in message
