"""Anomaly maps and image scores from an image and its reconstruction.

A reconstruction-based detector calls anomalous what it cannot reconstruct. The map is a
per-pixel dissimilarity between x and x_hat:

- ``"l2"``: the squared residual averaged over channels, mean_c (x - x_hat)^2 (the classic);
- ``"ssim"``: (1 - SSIM(x, x_hat)) / 2 per pixel, SSIM with an 11-px Gaussian window
  (sigma 1.5), as in Bergmann et al., "Improving Unsupervised Defect Segmentation by
  Applying Structural Similarity to Autoencoders", VISAPP 2019;
- ``"msgms"``: 1 - the multi-scale gradient-magnitude similarity (``msgms_map``), the map of
  RIAD (Zavrtanik et al., "Reconstruction by inpainting for visual anomaly detection",
  Pattern Recognition 2021) and DRAEM (ICCV 2021): it compares the local structure (edges,
  texture) of x and x_hat at 1, 1/2, 1/4 and 1/8 scale, so a uniform change of brightness
  leaves it at 0 and a lost or added edge raises it, however faint in intensity;
- ``"l2msgms"``: the geometric mean sqrt(l2 * msgms) per pixel: high only where intensity and
  structure both differ. Of the ways to combine two maps of unrelated units it is the one
  that needs no scale: scaling either map by a constant scales the result by a constant
  and changes no ranking, so no normaliser is fitted, and the maps of all images stay on
  one scale (a per-image normalisation would make every normal image's map peak at 1);

optionally smoothed by a Gaussian of ``score_sigma`` px (0 = off), which suppresses
single-pixel reconstruction noise that is not a defect. The image score reduces the map:
``"mean"`` (for the unsmoothed l2 map this is the classic ||x - x_hat||^2 / (C H W)),
``"max"``, or ``"topk"`` (mean of the largest ``score_topk`` fraction of pixels).

A ``ScoreConfig`` names one such rule. It is an evaluation setting, not a model setting:
the same trained weights are scored under any rule (docs/design.md, "The cache key"), so
re-scoring never retrains. Maps are computed in float32 even under autocast: the residual
of a bf16 reconstruction is upcast first, and the filters run with autocast off (a bf16 map
would hold a few hundred distinct values, ties that bend AUROC and AU-PRO).
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import ConfigError

SCORE_MAPS = ("l2", "ssim", "msgms", "l2msgms")
MSGMS_SCALES = 4  # 1, 1/2, 1/4, 1/8 of the input, as RIAD and DRAEM
# The GMS stabiliser of Xue et al., "Gradient Magnitude Similarity Deviation", IEEE TIP 2014:
# T = 170 for [0, 255] images with Prewitt filters / 3, i.e. 170 / 255^2 = 0.0026 for [0, 1].
GMS_C = 0.0026
SCORE_REDUCTIONS = ("mean", "max", "topk")


@dataclass(frozen=True, kw_only=True)
class ScoreConfig:
    """How a reconstruction becomes an anomaly map and an image score."""

    # "l2" (mean_c squared residual), "ssim" (1 - SSIM) / 2, "msgms" (1 - multi-scale gradient-magnitude
    # similarity) or "l2msgms" (sqrt(l2 * msgms))
    score_map: str = "l2"
    score_sigma: float = 4.0  # Gaussian smoothing of the map in px; 0 = raw map
    # Image score = mean of the top 1 % of the smoothed l2 map: a defect is local, and the mean
    # over all pixels dilutes it (+0.07-0.13 image AUROC on the demo for all three CNN models,
    # equal on hazelnut_toy; bench/README.md "Accuracy"). top-k is a max robust to one hot pixel.
    score_reduce: str = "topk"  # image score: "mean", "max" or "topk" of the map
    score_topk: float = 0.01  # fraction of pixels averaged by "topk"

    def validate(self) -> None:
        if self.score_map not in SCORE_MAPS:
            raise ConfigError(f"score_map {self.score_map!r} is unknown; valid: {', '.join(SCORE_MAPS)}.")
        if self.score_reduce not in SCORE_REDUCTIONS:
            raise ConfigError(f"score_reduce {self.score_reduce!r} is unknown; valid: {', '.join(SCORE_REDUCTIONS)}.")
        if not (math.isfinite(self.score_sigma) and self.score_sigma >= 0) or not 0 < self.score_topk <= 1:
            raise ConfigError(
                f"score_sigma must be >= 0 and score_topk in (0, 1], got {self.score_sigma} and {self.score_topk}."
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def name(self) -> str:
        """Short name for the results row, e.g. 'l2|sigma4|top0.01'."""
        return describe(self.score_map, self.score_sigma, self.score_reduce, self.score_topk)

    @classmethod
    def parse(cls, text: str) -> ScoreConfig:
        """'MAP/SIGMA/REDUCE' -> ScoreConfig, e.g. 'l2/4/top0.01', 'ssim/4/max', 'l2/0/mean'
        (the command line's ``--score``); 'default' is the default rule."""
        if text == "default":
            return cls()
        m = re.fullmatch(r"(\w+)/([0-9.]+)/(mean|max|top([0-9.]+))", text.strip())
        if not m:
            raise ConfigError(f"score rule {text!r} is not MAP/SIGMA/REDUCE; write e.g. l2/4/top0.01, ssim/4/max or "
                              f"l2/0/mean (MAP: {', '.join(SCORE_MAPS)}; REDUCE: mean, max or topF).")
        try:
            sigma = float(m.group(2))
            topk = float(m.group(4)) if m.group(4) else cls.score_topk
        except ValueError:
            raise ConfigError(f"score rule {text!r} has a number that is not a number; write e.g. l2/4/top0.01.") \
                from None
        reduce = "topk" if m.group(4) else m.group(3)
        config = cls(score_map=m.group(1), score_sigma=sigma, score_reduce=reduce, score_topk=topk)
        config.validate()
        return config


def _gaussian_kernel1d(sigma: float, device, dtype) -> torch.Tensor:
    radius = max(1, int(math.ceil(3.0 * sigma)))
    t = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a (B, C, H, W) tensor per channel, symmetric padding."""
    if sigma <= 0:
        return x
    k = _gaussian_kernel1d(sigma, x.device, x.dtype)
    c, r = x.shape[1], k.numel() // 2
    if r <= min(x.shape[-2:]):
        # Half-sample symmetric padding (scipy.ndimage's "reflect": the edge pixel is repeated).
        # With a symmetric kernel it preserves the map's total exactly, so a residual at the
        # border is not inflated; torch's "reflect" mode counts the pixel next to the edge twice.
        x = torch.cat([x[..., :r, :].flip(-2), x, x[..., -r:, :].flip(-2)], dim=-2)
        x = torch.cat([x[..., :r].flip(-1), x, x[..., -r:].flip(-1)], dim=-1)
    else:  # map smaller than the kernel radius
        x = F.pad(x, (r, r, r, r), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return x


def ssim_map(x: torch.Tensor, y: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel SSIM of two (B, C, H, W) images in [0, 1], averaged over channels -> (B, H, W)."""
    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = gaussian_blur(x, sigma), gaussian_blur(y, sigma)
    var_x = gaussian_blur(x * x, sigma) - mu_x**2
    var_y = gaussian_blur(y * y, sigma) - mu_y**2
    cov = gaussian_blur(x * y, sigma) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.mean(dim=1)


def gradient_magnitude(gray: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) -> (B, 1, H, W) gradient magnitude with the 3 x 3 Prewitt filters (each / 3),
    edges replicated: the border is not an edge against a zero frame."""
    prewitt = torch.tensor([[1.0, 0.0, -1.0]] * 3, device=gray.device, dtype=gray.dtype) / 3.0
    kernels = torch.stack([prewitt, prewitt.t()]).unsqueeze(1)  # (2, 1, 3, 3): d/dx, d/dy
    g = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), kernels)  # (B, 2, H, W)
    return (g[:, :1].square() + g[:, 1:].square()).sqrt()  # not torch.hypot: ONNX has no operator for it


def msgms_map(x: torch.Tensor, y: torch.Tensor, scales: int = MSGMS_SCALES) -> torch.Tensor:
    """1 - multi-scale gradient-magnitude similarity of two (B, C, H, W) images in [0, 1] -> (B, H, W).

    Channels are averaged to gray; at each scale (1, 1/2, ... 1/2^(scales-1), by 2 x 2
    average pooling) GMS = (2 g_x g_y + c) / (g_x^2 + g_y^2 + c) per pixel (g the gradient
    magnitude, c = ``GMS_C``), and 1 - GMS is upsampled bilinearly to H x W; the map is
    the mean over scales, in [0, 1], 0 where the two agree.
    """
    height, width = x.shape[-2:]
    gx, gy = x.mean(dim=1, keepdim=True), y.mean(dim=1, keepdim=True)  # (B, 1, H, W)
    total = torch.zeros_like(gx)
    for scale in range(scales):
        if scale > 0:  # ceil_mode: an odd or 1-px side still pools (a partial window is its own mean)
            gx, gy = F.avg_pool2d(gx, 2, ceil_mode=True), F.avg_pool2d(gy, 2, ceil_mode=True)
        mx, my = gradient_magnitude(gx), gradient_magnitude(gy)
        gms = (2 * mx * my + GMS_C) / (mx * mx + my * my + GMS_C)  # (B, 1, h, w), in (0, 1]
        total += F.interpolate(1.0 - gms, size=(height, width), mode="bilinear", align_corners=False)
    return (total / scales).squeeze(1).clamp_min(0.0)  # (B, H, W); clamp: rounding where gms = 1


def anomaly_map(x: torch.Tensor, x_hat: torch.Tensor, *, score_map: str = "l2",
                score_sigma: float = 0.0) -> torch.Tensor:
    """(B, C, H, W) image and reconstruction -> (B, H, W) map, >= 0, larger = more anomalous."""
    assert x.shape == x_hat.shape, f"image {tuple(x.shape)} and reconstruction {tuple(x_hat.shape)} differ"
    x, x_hat = x.float(), x_hat.float()
    with torch.autocast(x.device.type, enabled=False):  # float32 maps: the filters' conv2d would run in bf16
        if score_map == "l2":
            m = (x - x_hat).pow(2).mean(dim=1)
        elif score_map == "ssim":
            m = ((1.0 - ssim_map(x, x_hat)) / 2.0).clamp_min(0.0)
        elif score_map == "msgms":
            m = msgms_map(x, x_hat)
        elif score_map == "l2msgms":
            m = ((x - x_hat).pow(2).mean(dim=1) * msgms_map(x, x_hat)).sqrt()
        else:
            raise ValueError(f"unknown score_map {score_map!r}; valid: {', '.join(SCORE_MAPS)}")
        if score_sigma > 0:
            m = gaussian_blur(m.unsqueeze(1), score_sigma).squeeze(1)  # (B, H, W)
    return m


def reduce_map(maps: torch.Tensor, *, score_reduce: str = "mean", score_topk: float = 0.01) -> torch.Tensor:
    """(B, H, W) maps -> (B,) image scores (float32)."""
    flat = maps.float().flatten(1)  # (B, H*W)
    if score_reduce == "mean":
        return flat.mean(dim=1)
    if score_reduce == "max":
        return flat.amax(dim=1)
    if score_reduce == "topk":
        k = max(1, int(round(score_topk * flat.shape[1])))
        return flat.topk(k, dim=1).values.mean(dim=1)
    raise ValueError(f"unknown score_reduce {score_reduce!r}; valid: {', '.join(SCORE_REDUCTIONS)}")


def describe(score_map: str, score_sigma: float, score_reduce: str, score_topk: float) -> str:
    """Short name of a scoring rule for the results row, e.g. 'l2|sigma4|max'."""
    reduce = f"top{score_topk:g}" if score_reduce == "topk" else score_reduce
    return f"{score_map}|sigma{score_sigma:g}|{reduce}"
