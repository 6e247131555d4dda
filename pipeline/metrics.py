"""Per-category detection and segmentation metrics (docs/design.md, "Metrics").

- ``image_auroc``: ROC AUC of image scores (good = 0, defective = 1), scikit-learn.
- ``pixel_auroc``: ROC AUC over all test pixels pooled (good images included), computed
  from one sort with ties averaged (the Mann-Whitney statistic), so 10^7 pixels take a
  fraction of a second; it equals ``sklearn.metrics.roc_auc_score`` (tested).
- ``aupro``: MVTec's per-region overlap (Bergmann et al., "The MVTec Anomaly Detection
  Dataset", IJCV 2021, section 3.2 / the official ``pro_curve_util.py``): for each
  threshold, PRO = mean over all ground-truth connected components (8-connected, pooled
  over images) of the fraction of the component above threshold, FPR = false-positive
  pixels / all normal pixels; the area under PRO(FPR) for FPR in [0, limit] (trapezoids,
  PRO interpolated at the limit), divided by the limit.
- ``f1_at_threshold``: F1 at a decision threshold chosen from the ``val`` normal scores
  only (``thresholds.val_threshold``); ``f1_max``: the best F1 over all test thresholds, an
  oracle; ``f1_floor``: the F1 of calling every image defective.

Undefined metrics (one class only, no masks) are NaN with a warning, never a crash.
Metrics know nothing of models: inputs are arrays or tensors.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, precision_recall_fscore_support, roc_auc_score

# 8-connectivity, as in MVTec's evaluation code: diagonal pixels belong to the same defect.
_STRUCTURE = np.ones((3, 3), dtype=int)


def _as_numpy(x, dtype=None) -> np.ndarray:
    """Tensor / list / array -> numpy array (CPU, detached)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    return a.astype(dtype, copy=False) if dtype is not None else a


def _check_scores(scores: np.ndarray, what: str) -> None:
    if not np.isfinite(scores).all():
        raise ValueError(f"{what} contain NaN or infinite values; the model's output is not usable.")


def _two_classes(labels: np.ndarray, metric: str) -> bool:
    """True if both classes are present; otherwise warn that ``metric`` is undefined."""
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.size:
        only = "defective" if n_pos else "good"
        warnings.warn(f"{metric} is undefined (NaN): the test set holds only {only} samples.", stacklevel=3)
        return False
    return True


def image_auroc(labels, scores) -> float:
    """ROC AUC of image scores; ``labels`` 0 = good, 1 = defective. NaN if one class only."""
    y = _as_numpy(labels).astype(bool).ravel()
    s = _as_numpy(scores, np.float64).ravel()
    assert y.shape == s.shape, f"{y.size} labels but {s.size} scores"
    _check_scores(s, "image scores")
    if not _two_classes(y, "image AUROC"):
        return math.nan
    return float(roc_auc_score(y, s))


def _auroc_ranked(y: np.ndarray, s: np.ndarray) -> float:
    """AUROC = P(s+ > s-) + 1/2 P(s+ = s-) (Mann-Whitney U / (n+ n-)), ties counted half.

    Sorting the negatives and the positives (numpy's vectorised sort) and counting, for every
    positive, the negatives below and tied by ``searchsorted`` costs two sorts and no argsort.
    """
    neg, pos = np.sort(s[~y]), np.sort(s[y])
    below = np.searchsorted(neg, pos, side="left").sum(dtype=np.float64)  # negatives strictly below
    below_or_tied = np.searchsorted(neg, pos, side="right").sum(dtype=np.float64)
    return float((below + below_or_tied) / 2.0 / (float(pos.size) * float(neg.size)))


def _masks_and_maps(masks, maps) -> tuple[np.ndarray, np.ndarray] | tuple[list, list]:
    """Masks as bool and maps as float32: arrays (N, H, W) (a single (H, W) image is one of
    N), or lists of (H_i, W_i) arrays for images evaluated at their own sizes."""
    if isinstance(masks, (list, tuple)):
        pairs = [_masks_and_maps(m, a) for m, a in zip(masks, maps, strict=True)]
        return [m[0] for m, _ in pairs], [a[0] for _, a in pairs]
    m = _as_numpy(masks)
    a = _as_numpy(maps, np.float32)
    if m.ndim == 2:  # a single image
        m, a = m[None], a[None]
    assert m.shape == a.shape, f"masks {m.shape} and maps {a.shape} differ; evaluate at one resolution"
    _check_scores(a, "anomaly maps")
    return m > 0, a


def _flat(arrays: list[np.ndarray], dtype) -> np.ndarray:
    """Per-image arrays of any sizes joined into one flat array (an empty one of ``dtype``)."""
    return np.concatenate([x.ravel() for x in arrays]) if arrays else np.zeros(0, dtype)


def _pooled(masks, maps) -> tuple[np.ndarray, np.ndarray]:
    """Every pixel of every image: (labels, scores), flat."""
    m, a = _masks_and_maps(masks, maps)
    if isinstance(m, list):
        return _flat(m, bool), _flat(a, np.float32)
    return m.ravel(), a.ravel()


def _regions(masks, maps) -> tuple[np.ndarray, int, np.ndarray]:
    """(component id of every pixel, 0 = normal; number of components; scores), flat.

    Components are 8-connected within each image (MVTec's evaluation), never across images.
    """
    m, a = _masks_and_maps(masks, maps)
    if isinstance(m, list):  # images of different sizes: label one by one, ids offset
        ids, n_comp = [], 0
        for mask in m:
            labelled, n = ndimage.label(mask, structure=_STRUCTURE)
            ids.append(np.where(labelled > 0, labelled + n_comp, 0).ravel())
            n_comp += n
        return _flat(ids, np.int64), n_comp, _flat(a, np.float32)
    structure = np.zeros((3, 3, 3), dtype=int)
    structure[1] = _STRUCTURE  # 8-connected in-plane, never across images: (N, H, W) labelled at once
    labelled, n_comp = ndimage.label(m, structure=structure)
    return labelled.ravel(), n_comp, a.ravel()


def pixel_auroc(masks, maps) -> float:
    """ROC AUC over all pixels of all test images pooled; masks (N, H, W) 0/1, maps (N, H, W).

    Maps are used as they are: never min-max normalised per image (that would compare
    pixels of different images on different scales).
    """
    y, s = _pooled(masks, maps)
    if not _two_classes(y, "pixel AUROC"):
        return math.nan
    return _auroc_ranked(y, s)


def pro_curve(masks, maps, fpr_limit: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The exact PRO(FPR) curve over all thresholds from (0, 0), as (fpr, pro) arrays.

    Components are 8-connected (MVTec's evaluation) within each image and pooled over images.
    Each defect pixel carries the weight 1/(K |component|), so PRO(t) is the summed weight of
    defect pixels scoring >= t, and FPR(t) = #(normal >= t) / #normal. The curve only turns
    at distinct defect scores u_k: normal-only thresholds between them move along the level
    PRO(u_{k-1}), and the pixels tied at u_k make one diagonal step. So it is exact to emit,
    per u_k, the two points (FPR(> u_k), PRO(u_{k-1})) and (FPR(>= u_k), PRO(u_k)): one sort of
    the normal scores, one argsort of the (few) defect pixels, and ``searchsorted`` -- no loop
    over thresholds.

    With ``fpr_limit`` < 1 the curve stops at the first point with FPR >= fpr_limit: only
    the normal scores above their (1 - fpr_limit) quantile ``c`` are sorted (after an O(n)
    partition), and the last point is the exact (FPR(>= c), PRO(>= c)).
    """
    labelled, n_comp, a = _regions(masks, maps)
    m = labelled > 0
    if n_comp == 0 or m.all():
        return np.array([0.0, 1.0]), np.array([0.0, 0.0 if n_comp == 0 else 1.0])
    lab = labelled[m]  # component id of each defect pixel
    sizes = np.bincount(lab, minlength=n_comp + 1).astype(np.float64)
    weights = 1.0 / (n_comp * sizes[lab])
    normal, d = a[~m], a[m]
    n = normal.size

    cutoff = -np.inf
    if fpr_limit < 1.0:
        k = min(n, math.ceil(fpr_limit * n))  # normals needed to reach the limit
        cutoff = np.partition(normal, n - k)[n - k]  # the k-th largest normal score
        normal = normal[normal >= cutoff]
        keep = d >= cutoff
        d, weights = d[keep], weights[keep]
    normal = np.sort(normal)  # ascending; counts below are "n minus the ones under u"

    order = np.argsort(-d)  # defect pixels, descending
    d, w = d[order], weights[order]
    ends = np.flatnonzero(np.r_[d[1:] != d[:-1], True])[: d.size]  # last index of each tie group
    u = d[ends]  # distinct defect scores, descending
    pro = np.minimum(np.cumsum(w)[ends], 1.0)
    fpr_ge = (normal.size - np.searchsorted(normal, u, side="left")) / n
    fpr_gt = (normal.size - np.searchsorted(normal, u, side="right")) / n
    fpr = np.column_stack([fpr_gt, fpr_ge]).ravel()  # interleave the two points per u_k
    pro_before = np.r_[0.0, pro[:-1]][: pro.size]  # PRO(u_{k-1}); empty if no defect passes
    pro_pts = np.column_stack([pro_before, pro]).ravel()
    last_pro = pro[-1] if pro.size else 0.0
    last_fpr = normal.size / n  # FPR at the cutoff (1.0 without a limit)
    return np.r_[0.0, fpr, last_fpr], np.r_[0.0, pro_pts, last_pro]


def _area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under y(x) for x in [0, x_max], y linearly interpolated at x_max."""
    inside = x <= x_max
    xs, ys = x[inside], y[inside]
    if xs[-1] < x_max and inside.sum() < x.size:
        j = int(inside.sum())  # first point beyond x_max
        t = (x_max - x[j - 1]) / (x[j] - x[j - 1])
        xs = np.r_[xs, x_max]
        ys = np.r_[ys, y[j - 1] + t * (y[j] - y[j - 1])]
    return float(np.trapezoid(ys, xs)) if hasattr(np, "trapezoid") else float(np.trapz(ys, xs))


def aupro(masks, maps, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (MVTec AD's AU-PRO, in [0, 1])."""
    assert 0 < fpr_limit <= 1, f"fpr_limit must be in (0, 1], got {fpr_limit}"
    m, a = _masks_and_maps(masks, maps)
    if not _two_classes(_flat(m, bool) if isinstance(m, list) else m, "AU-PRO"):  # the labels only, no map copy
        return math.nan
    fpr, pro = pro_curve(m, a, fpr_limit=fpr_limit)
    return _area_up_to(fpr, pro, fpr_limit) / fpr_limit


# --- F1 at a threshold (chosen from val normals only: pipeline/thresholds.py) ----------------------


def f1_at_threshold(labels, scores, threshold: float) -> dict[str, float]:
    """F1, precision and recall of "defective iff score > threshold" (zero_division = 0)."""
    y = _as_numpy(labels).astype(bool).ravel()
    s = _as_numpy(scores, np.float64).ravel()
    nan = {"f1": math.nan, "precision": math.nan, "recall": math.nan}
    if math.isnan(threshold) or not y.any():
        if not y.any():
            warnings.warn("F1 is undefined (NaN): the test set holds no defective samples.", stacklevel=2)
        return nan
    precision, recall, f1, _ = precision_recall_fscore_support(y, s > threshold, average="binary", zero_division=0)
    return {"f1": float(f1), "precision": float(precision), "recall": float(recall)}


def f1_floor(labels) -> float:
    """F1 of calling every test image defective: 2p / (1 + p), p = share of defective images
    (precision p, recall 1). An F1 (or F1-max) at this floor is no skill at all."""
    y = _as_numpy(labels).astype(bool).ravel()
    if not y.any():
        return math.nan
    p = float(y.mean())
    return 2 * p / (1 + p)


def f1_max(labels, scores) -> float:
    """Best F1 over every threshold on the test set itself: an oracle (it peeks at test labels)."""
    y = _as_numpy(labels).astype(bool).ravel()
    s = _as_numpy(scores, np.float64).ravel()
    _check_scores(s, "image scores")
    if not y.any():
        warnings.warn("F1-max is undefined (NaN): the test set holds no defective samples.", stacklevel=2)
        return math.nan
    p, r, _ = precision_recall_curve(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    return float(f1.max())
