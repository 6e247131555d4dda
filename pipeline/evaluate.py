"""Evaluation: a trained model and a category's data -> anomaly maps, scores and metrics.

How a model is evaluated is its own config, ``EvalConfig``, apart from the model's and the
training's (docs/design.md, "The cache key"): the scoring rule (``models.scoring.ScoreConfig``),
the size of the pixel metrics (``eval_size``) and the threshold rule. Changing it
re-evaluates a checkpoint; it never retrains.

``score_split`` runs the model over a split (batched, eval mode, no gradients) and returns
float32 maps at the model's input size and image scores, on the CPU; ``maps_at`` upsamples
maps to the evaluation shape (``eval_shape``); ``compute_metrics`` turns test maps and
scores, the test labels and masks and the ``val`` normal scores into the row's metrics;
``evaluate`` does all of it for one job. Nothing here trains or writes files.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from models import ImageSize, canonical_size, image_hw, scoring
from models.errors import ConfigError, TrainingError
from models.scoring import ScoreConfig

from . import metrics, stats
from .batches import BatchSource, autocast, batch_indices, prefers_channels_last
from .thresholds import (
    DEFAULT_THRESHOLD_RULE,
    canonical_threshold_rule,
    check_threshold_rule,
    few_val_warning,
    val_threshold,
)

METRIC_NAMES = ("image_auroc", "pixel_auroc", "aupro", "f1", "precision", "recall", "threshold", "f1_max",
                "f1_floor")
# Pixel metrics at 256 px: the common MVTec AD protocol (maps upsampled from the model's size,
# masks read at 256). Metrics at the 128-px training size merge or drop small defect regions
# (6 of 72 on one demo category) and move AU-PRO by up to 0.07 against the same maps at 256.
DEFAULT_EVAL_SIZE = 256
# The few-val-images warnings already given in this process. Python's own once-per-text registry
# is cleared whenever any library changes the warning filters (a lazy import mid-grid does).
_FEW_VAL_SAID: set[str] = set()


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """How a trained model is evaluated; part of a row's key, not of its checkpoint's."""

    score: ScoreConfig = field(default_factory=ScoreConfig)  # map and image score from a reconstruction
    # The pixel metrics' size: S = S px on the short side at the input's aspect (S x S for
    # square inputs), or "original" = each image at its own size and aspect.
    eval_size: int | str = DEFAULT_EVAL_SIZE
    threshold_rule: str = DEFAULT_THRESHOLD_RULE  # the F1 threshold from val normal scores (thresholds.py)

    def __post_init__(self) -> None:
        # One spelling per rule (val_p100 = val_max, val_p95.0 = val_p95), so that the key is one row;
        # an unknown rule stays as given, for validate() to name.
        try:
            object.__setattr__(self, "threshold_rule", canonical_threshold_rule(self.threshold_rule))
        except ValueError:
            pass

    def validate(self) -> None:
        self.score.validate()
        size = self.eval_size
        if size != "original" and (isinstance(size, bool) or not isinstance(size, int) or size < 16):
            raise ConfigError(f"the evaluation size must be a whole number of px >= 16 or 'original', got {size!r}.")
        try:
            check_threshold_rule(self.threshold_rule)
        except ValueError as e:
            raise ConfigError(f"{str(e).rstrip('.')}.") from None

    def to_dict(self) -> dict:
        return {"score": self.score.to_dict(), "eval_size": self.eval_size, "threshold_rule": self.threshold_rule}

    @classmethod
    def from_dict(cls, d: dict) -> EvalConfig:
        return cls(score=ScoreConfig(**d["score"]), eval_size=d["eval_size"], threshold_rule=d["threshold_rule"])


def parse_eval_size(text) -> int | str:
    """'256' -> 256, 'original' -> 'original' (the command line's and the notebook's EVAL_SIZE)."""
    if isinstance(text, int) or text == "original":
        return text
    try:
        return int(text)
    except (TypeError, ValueError):
        raise ConfigError(f"the evaluation size must be a whole number of px or 'original', got {text!r}.") from None


def eval_shape(eval_size: int | str, image_size: ImageSize) -> ImageSize | str:
    """The shape the pixel metrics are computed at, for inputs of ``image_size``: S px on the
    short side at the input's aspect (S x S for square inputs, the MVTec protocol; 256 x 640
    for 128 x 320 inputs), or ``"original"``."""
    if eval_size == "original":
        return eval_size
    height, width = image_hw(image_size)
    scale = eval_size / min(height, width)
    return canonical_size((round(height * scale), round(width * scale)))


def score_split(model, ds, *, score: ScoreConfig | None = None, batch_size: int = 32, device=None,
                amp: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Anomaly maps (N, H, W) float32 at the model's input size and image scores (N,) float32
    of a whole split, on the CPU, under the scoring rule ``score`` (default ``ScoreConfig()``).

    Batched, in eval mode under ``inference_mode`` (``AnomalyModel.anomaly_map``); the image
    score is reduced from the same map, so the reconstruction runs once per image. The model
    may run under bf16 autocast; the maps are float32 whatever it ran in (models/scoring.py).
    """
    score = score or ScoreConfig()
    device = device or next(model.parameters()).device
    channels_last = prefers_channels_last(model, device)
    if channels_last:
        model.to(memory_format=torch.channels_last)  # a no-op after fit(); a loaded checkpoint is NCHW
    source = BatchSource(ds.images, device, channels_last=channels_last)
    maps, scores = [], []
    with torch.inference_mode():
        for idx in batch_indices(len(source), batch_size):
            with autocast(device, amp):
                m = model.anomaly_map(source.batch(idx), score)  # (B, H, W) float32
            scores.append(scoring.reduce_map(m, score_reduce=score.score_reduce, score_topk=score.score_topk))
            maps.append(m)
    if not maps:
        return torch.empty((0, *ds.images.shape[-2:])), torch.empty(0)
    return torch.cat(maps).cpu(), torch.cat(scores).cpu()  # one device->host copy (and sync), not one per batch


def maps_at(maps: torch.Tensor, size: ImageSize | str, original_sizes=None) -> torch.Tensor | list[np.ndarray]:
    """Maps (N, H, W) at an evaluation shape (``eval_shape``): bilinear resizing (align_corners=False,
    as torchvision's Resize) to S x S or (H', W'), or with ``size="original"`` a list of (H_i, W_i)
    float32 arrays, one per image at its own size (``original_sizes``: (width, height) each)."""
    maps = maps.float()
    if size == "original":
        assert original_sizes is not None and len(original_sizes) == len(maps), "one original size per map"
        return [F.interpolate(m[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
                for m, (w, h) in zip(maps, original_sizes)]
    target = image_hw(size)
    if tuple(maps.shape[-2:]) == target or len(maps) == 0:
        return maps
    out = []
    for chunk in maps.split(64):  # bounded temporary memory for large test sets
        out.append(F.interpolate(chunk[:, None], size=target, mode="bilinear", align_corners=False)[:, 0])
    return torch.cat(out)  # (N, H', W')


def compute_metrics(labels: np.ndarray, masks, test_maps, test_scores, val_scores, threshold_rule: str) -> dict:
    """The row's metrics (METRIC_NAMES) of one category's test split.

    ``masks`` and ``test_maps`` at one shape (arrays (N, H, W), or lists of per-image
    arrays); ``masks`` None (no ground truth): the pixel metrics are NaN. The F1 threshold comes
    from the ``val`` normal scores only (``threshold_rule``); ``f1_max`` is the test-tuned
    oracle and ``f1_floor`` the F1 of calling every image defective.
    """
    out = {"image_auroc": metrics.image_auroc(labels, test_scores)}
    if masks is not None:
        out["pixel_auroc"] = metrics.pixel_auroc(masks, test_maps)
        out["aupro"] = metrics.aupro(masks, test_maps)
    else:  # the dataset already warned which masks are missing
        out["pixel_auroc"] = out["aupro"] = math.nan
    out["threshold"] = val_threshold(val_scores, threshold_rule)
    out.update(metrics.f1_at_threshold(labels, test_scores, out["threshold"]))
    out["f1_max"] = metrics.f1_max(labels, test_scores)
    out["f1_floor"] = metrics.f1_floor(labels)
    return out


@dataclass
class Evaluation:
    """What ``evaluate`` measured for one trained model on one category."""

    test_maps: torch.Tensor  # (N_test, H, W) float32 at the model's input size
    test_scores: torch.Tensor  # (N_test,) float32
    val_scores: torch.Tensor  # (N_val,) float32
    metrics: dict  # METRIC_NAMES -> float
    score_seconds: float  # scoring the test split (maps and scores)
    metrics_seconds: float
    # Per-image pixel histograms at the evaluation size (stats.pixel_histograms), for the
    # bootstrap over test images; None without masks.
    pixel_pos: np.ndarray | None = None  # (N_test, K) defect-pixel counts per bin
    pixel_neg: np.ndarray | None = None  # (N_test, K) normal-pixel counts per bin
    eval_shape: ImageSize | str = DEFAULT_EVAL_SIZE  # where the pixel metrics were computed (eval_shape())

    @property
    def infer_ms_per_image(self) -> float:
        return 1000.0 * self.score_seconds / max(1, len(self.test_scores))


def evaluate(model, data, config: EvalConfig | None = None, *, batch_size: int = 32, amp: bool = True,
             desc: str = "the model") -> Evaluation:
    """Score ``data.test`` and ``data.val`` with ``model`` under ``config`` and compute the metrics.

    Image scores come from the maps at the model's size; the pixel metrics from the maps
    upsampled to the evaluation shape (``eval_shape``: ``config.eval_size`` on the short side at
    the input's aspect, or each image's own size) against the masks read at that shape.
    Non-finite maps (a model that diverged in its last steps) are a ``TrainingError``.
    """
    config = config or EvalConfig()
    t0 = time.perf_counter()
    test_maps, test_scores = score_split(model, data.test, score=config.score, batch_size=batch_size, amp=amp)
    score_seconds = time.perf_counter() - t0
    _, val_scores = score_split(model, data.val, score=config.score, batch_size=batch_size, amp=amp)
    few_val = few_val_warning(data.val.category, len(val_scores), data.val.n_files, data.val.val_fraction)
    if few_val and few_val not in _FEW_VAL_SAID:  # once per category, not once per model and seed
        _FEW_VAL_SAID.add(few_val)
        warnings.warn(few_val, stacklevel=2)
    if not (torch.isfinite(test_maps).all() and torch.isfinite(val_scores).all()):
        raise TrainingError(f"{desc}: the trained model gives NaN or infinite anomaly maps (training diverged "
                            "in its last steps); lower the learning rate or keep gradient clipping on.")
    t0 = time.perf_counter()
    labels = data.test.labels.numpy()
    masks = eval_maps = pixel_pos = pixel_neg = None
    shape = eval_shape(config.eval_size, data.test.image_size)
    if data.test.has_masks:
        masks = data.test.masks_at(shape)
        eval_maps = maps_at(test_maps, shape, data.test.original_sizes)
        if isinstance(masks, torch.Tensor):
            masks, eval_maps = masks.numpy(), eval_maps.numpy()
        edges = stats.histogram_edges(eval_maps)  # stats.HISTOGRAM_BINS quantile bins
        pixel_pos, pixel_neg = stats.pixel_histograms(masks, eval_maps, edges)
    row_metrics = compute_metrics(labels, masks, eval_maps, test_scores, val_scores, config.threshold_rule)
    return Evaluation(test_maps, test_scores, val_scores, row_metrics, score_seconds, time.perf_counter() - t0,
                      pixel_pos=pixel_pos, pixel_neg=pixel_neg, eval_shape=shape)
