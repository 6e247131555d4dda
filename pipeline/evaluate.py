"""Evaluation: a trained model and a category's data -> anomaly maps, scores and metrics.

``score_split`` runs the model over a split (batched, eval mode, no gradients) and returns
float32 maps and image scores on the CPU; ``compute_metrics`` turns test maps and scores,
the test labels and masks and the ``val`` normal scores into the row's metrics; ``evaluate``
does both for one job. Nothing here trains or writes files.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from models import scoring
from models.errors import TrainingError

from . import metrics
from .train import BatchSource, autocast, batch_indices, has_conv

METRIC_NAMES = ("image_auroc", "pixel_auroc", "aupro", "f1", "precision", "recall", "threshold", "f1_max")


def score_split(model, ds, *, batch_size: int = 32, device=None, amp: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Anomaly maps (N, H, W) float32 and image scores (N,) of a whole split, on the CPU.

    Batched, in eval mode under ``inference_mode`` (``AnomalyModel.anomaly_map``); the image
    score is reduced from the same map, so the reconstruction runs once per image.
    """
    device = device or next(model.parameters()).device
    cfg = model.config
    channels_last = has_conv(model) and device.type in ("cuda", "cpu")  # NHWC convs are faster on both
    if channels_last:
        model.to(memory_format=torch.channels_last)  # a no-op after fit(); a loaded checkpoint is NCHW
    source = BatchSource(ds.images, device, channels_last=channels_last)
    maps, scores = [], []
    with torch.inference_mode():
        for idx in batch_indices(len(source), batch_size):
            with autocast(device, amp):
                m = model.anomaly_map(source.batch(idx)).float()  # (B, H, W)
            scores.append(scoring.reduce_map(m, score_reduce=cfg.score_reduce, score_topk=cfg.score_topk))
            maps.append(m)
    if not maps:
        s = ds.images.shape[-1]
        return torch.empty((0, s, s)), torch.empty(0)
    return torch.cat(maps).cpu(), torch.cat(scores).cpu()  # one device->host copy (and sync), not one per batch


def compute_metrics(labels: np.ndarray, masks: np.ndarray | None, test_maps, test_scores, val_scores,
                    threshold_rule: str) -> dict:
    """The row's metrics (METRIC_NAMES) of one category's test split.

    ``masks`` None (no ground truth): the pixel metrics are NaN. The F1 threshold comes from
    the ``val`` normal scores only (``threshold_rule``); ``f1_max`` is the test-tuned oracle.
    """
    out = {"image_auroc": metrics.image_auroc(labels, test_scores)}
    if masks is not None:
        out["pixel_auroc"] = metrics.pixel_auroc(masks, test_maps)
        out["aupro"] = metrics.aupro(masks, test_maps)
    else:  # the dataset already warned which masks are missing
        out["pixel_auroc"] = out["aupro"] = math.nan
    out["threshold"] = metrics.val_threshold(val_scores, threshold_rule)
    out.update(metrics.f1_at_threshold(labels, test_scores, out["threshold"]))
    out["f1_max"] = metrics.f1_max(labels, test_scores)
    return out


@dataclass
class Evaluation:
    """What ``evaluate`` measured for one trained model on one category."""

    test_maps: torch.Tensor  # (N_test, H, W) float32
    test_scores: torch.Tensor  # (N_test,)
    val_scores: torch.Tensor  # (N_val,)
    metrics: dict  # METRIC_NAMES -> float
    score_seconds: float  # scoring the test split (maps and scores)
    metrics_seconds: float

    @property
    def infer_ms_per_image(self) -> float:
        return 1000.0 * self.score_seconds / max(1, len(self.test_scores))


def evaluate(model, data, *, threshold_rule: str, batch_size: int = 32, amp: bool = True,
             desc: str = "the model") -> Evaluation:
    """Score ``data.test`` and ``data.val`` with ``model`` and compute the metrics.

    Non-finite maps (a model that diverged in its last steps) are a ``TrainingError``.
    """
    t0 = time.perf_counter()
    test_maps, test_scores = score_split(model, data.test, batch_size=batch_size, amp=amp)
    score_seconds = time.perf_counter() - t0
    _, val_scores = score_split(model, data.val, batch_size=batch_size, amp=amp)
    if not (torch.isfinite(test_maps).all() and torch.isfinite(val_scores).all()):
        raise TrainingError(f"{desc}: the trained model gives NaN or infinite anomaly maps (training diverged "
                            "in its last steps); lower the learning rate or keep gradient clipping on.")
    t0 = time.perf_counter()
    masks = data.test.masks.numpy() if data.test.has_masks else None
    row_metrics = compute_metrics(data.test.labels.numpy(), masks, test_maps, test_scores, val_scores, threshold_rule)
    return Evaluation(test_maps, test_scores, val_scores, row_metrics, score_seconds, time.perf_counter() - t0)
