"""Image-level decision thresholds from the scores of the ``val`` normal images only.

A test image is called defective when its score is strictly above the threshold. The
threshold never sees a test image or label. Rules (K, NN: non-negative numbers, decimals
allowed):

- ``val_max``: the largest val score. No val image is flagged, but ONE odd normal image
  decides it: one val normal as odd as the worst test image takes F1 to 0.00 on the demo; and
  its false-alarm rate drifts with the number of val images n (a max of 6 scores is low,
  of 72 high).
- ``val_pNN`` (0 <= NN <= 100): that percentile of the val scores (numpy's linear
  interpolation). With few val images it is the max again (p95 of 12 scores is 45 % of
  the way from the 2nd largest to the largest), so it survives an odd image only for n >~ 20.
- ``val_mean+Kstd``: mean + K population standard deviations (ddof 0). One outlier
  inflates the sd, and the threshold with it.
- ``val_median+Kmad``: median + K * MAD, the MAD scaled by 1.4826 so that it estimates the
  sd of Gaussian scores (K is then "sd units", as for mean+Kstd) -- Hampel's robust
  outlier rule. Half the val images would have to be odd to move it far. If more than half
  the scores tie (MAD = 0) the scale falls back to 1.2533 x the mean absolute deviation
  from the median (the usual fallback of the modified z-score; also an sd estimate for
  Gaussian scores), so it is finite and >= the median for any n >= 1 (n = 1: the score
  itself; n = 2: mean + 1.4826 K |a - b| / 2).
- ``val_lognorm_pNN`` (0 < NN < 100): the NN-th percentile of a log-normal fitted robustly
  to the val scores, exp(median(log s) + z_NN * 1.4826 MAD(log s)) (same fallback). Right-
  skewed scores (residual energies are) become near-Gaussian in log; scores must be > 0.

Default ``val_median+2mad``, chosen with ``bench/thresholds.py`` for (1) surviving one odd
val image, (2) a false-alarm rate that drifts less with the number of val images than the
max's, and (3) a mean F1 at least val_max's at every number of val images, so that no result
gets worse; its price is a few more good images flagged. F1 alone cannot choose: where most
test images are defective it rises as the threshold falls, all the way to "flag everything".
The measurements (demo and dev photographs, small val sets, simulated scores) and the
category where no rule helps: bench/README.md, "Threshold rules".
"""
from __future__ import annotations

import math
import re
import warnings
from statistics import NormalDist

import numpy as np

DEFAULT_THRESHOLD_RULE = "val_median+2mad"

THRESHOLD_RULES = (
    "val_max",
    "val_pNN (e.g. val_p99, 0 <= NN <= 100)",
    "val_mean+Kstd (e.g. val_mean+3std)",
    "val_median+Kmad (e.g. val_median+2mad)",
    "val_lognorm_pNN (e.g. val_lognorm_p99, 0 < NN < 100)",
)

MAD_TO_SD = 1.482602218505602  # 1 / Phi^-1(3/4): a Gaussian's MAD times this is its sd
MEAN_AD_TO_SD = 1.2533141373155001  # sqrt(pi / 2): a Gaussian's mean absolute deviation times this is its sd

_NUM = r"(\d+(?:\.\d+)?)"  # a non-negative number: no sign, no exponent
_PATTERNS = (
    ("max", re.compile(r"val_max")),
    ("quantile", re.compile(rf"val_p{_NUM}")),
    ("mean_std", re.compile(rf"val_mean\+{_NUM}std")),
    ("median_mad", re.compile(rf"val_median\+{_NUM}mad")),
    ("lognorm", re.compile(rf"val_lognorm_p{_NUM}")),
)


def _unknown(rule) -> ValueError:
    # No final period: pipeline.job.JobSpec.validate wraps the message in a ConfigError and adds one.
    return ValueError(f"unknown threshold rule {rule!r}; valid forms: {', '.join(THRESHOLD_RULES)}")


def _parse(rule) -> tuple[str, float]:
    """'val_median+3mad' -> ('median_mad', 3.0); ValueError for anything else."""
    if isinstance(rule, str):
        for kind, pattern in _PATTERNS:
            if m := pattern.fullmatch(rule):
                value = float(m.group(1)) if pattern.groups else math.nan
                if (kind == "quantile" and value > 100) or (kind == "lognorm" and not 0 < value < 100):
                    break
                return kind, value
    raise _unknown(rule)


def check_threshold_rule(rule) -> None:
    """Raise ``val_threshold``'s ValueError if ``rule`` is unknown or malformed (no scores needed)."""
    _parse(rule)


def _number(value: float) -> str:
    """The shortest plain spelling of a rule's number: 2.0 -> '2', 99.50 -> '99.5', 1e-07 -> '0.0000001'."""
    return np.format_float_positional(value, trim="-")


def canonical_threshold_rule(rule) -> str:
    """One spelling per threshold, so that spellings of one rule share a row's key: numbers in
    their shortest form (val_p95.0 -> val_p95, val_mean+2.0std -> val_mean+2std, val_p050 -> val_p50),
    and rules that are the same function of the scores under one name (val_p100 -> val_max, the
    100th percentile being the max; val_median+0mad -> val_p50, both the median). The default's
    spelling is already canonical. ValueError (``check_threshold_rule``'s) for an unknown rule."""
    kind, value = _parse(rule)
    if kind == "max" or (kind == "quantile" and value == 100):
        return "val_max"
    if kind == "median_mad" and value == 0:
        return "val_p50"
    number = _number(value)
    return {"quantile": f"val_p{number}", "mean_std": f"val_mean+{number}std", "median_mad": f"val_median+{number}mad",
            "lognorm": f"val_lognorm_p{number}"}[kind]


# Below this many val images a threshold rests on too few normals: which images were held out
# decides F1 (bench/README.md, "Few val images": grid, 2 val images).
FEW_VAL_IMAGES = 10


def few_val_warning(category: str, n_val: int, n_files: int, val_fraction: float) -> str | None:
    """The warning for a threshold from 1 .. FEW_VAL_IMAGES - 1 val images (``n_val`` of the
    ``n_files`` train/good images, held out at ``val_fraction``), else None (0 val images:
    ``val_threshold`` says the threshold is NaN)."""
    if not 0 < n_val < FEW_VAL_IMAGES:
        return None
    images = "image" if n_val == 1 else "images"
    return (f"the F1 threshold of {category!r} rests on {n_val} val {images} (val_fraction {val_fraction:g} of its "
            f"{n_files} train/good images), fewer than {FEW_VAL_IMAGES}, so its F1, precision and recall depend on "
            f"which images were held out; compare models there by AUROC and AU-PRO, or add normal images to "
            f"train/good.")


def _robust_scale(s: np.ndarray, center: float) -> float:
    """sd estimate 1.4826 MAD; if that is 0 (over half the scores tie), 1.2533 x mean |s - center|."""
    dev = np.abs(s - center)
    mad = float(np.median(dev))
    return MAD_TO_SD * mad if mad > 0 else MEAN_AD_TO_SD * float(dev.mean())


def val_threshold(val_scores, rule: str = DEFAULT_THRESHOLD_RULE) -> float:
    """Decision threshold from the ``val`` normal scores only (never test labels); see the module docstring.

    ``val_scores``: numpy array, tensor or list. An image is defective when score > threshold.
    No scores: NaN with a warning. Non-finite scores, or an unknown rule: ValueError.
    """
    kind, k = _parse(rule)
    if hasattr(val_scores, "detach"):
        val_scores = val_scores.detach().cpu().numpy()
    s = np.asarray(val_scores, dtype=np.float64).ravel()
    if s.size == 0:
        warnings.warn("no val images: the decision threshold (and F1) is NaN.", stacklevel=2)
        return math.nan
    if not np.isfinite(s).all():
        raise ValueError("val scores contain NaN or infinite values; the model's output is not usable.")
    if kind == "max":
        return float(s.max())
    if kind == "quantile":
        return float(np.percentile(s, k))
    if kind == "mean_std":
        return float(s.mean() + k * s.std())
    if kind == "median_mad":
        center = float(np.median(s))
        return center + k * _robust_scale(s, center)
    # lognorm
    if (s <= 0).any():
        raise ValueError(f"threshold rule {rule!r} fits a log-normal and needs positive val scores, "
                         f"but {int((s <= 0).sum())} are <= 0; use val_median+Kmad instead")
    logs = np.log(s)
    center = float(np.median(logs))
    return float(np.exp(center + NormalDist().inv_cdf(k / 100.0) * _robust_scale(logs, center)))
