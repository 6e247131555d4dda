"""Metrics against scikit-learn and against slow, obviously-correct references written here."""
import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import f1_score, roc_auc_score

from pipeline import metrics


def slow_aupro(masks, maps, fpr_limit=0.3):
    """MVTec AU-PRO by brute force: one pass over the data per distinct threshold."""
    masks = np.asarray(masks) > 0
    comps = []  # boolean mask of every ground-truth component, pooled over images
    for i in range(masks.shape[0]):
        lab, k = ndimage.label(masks[i], structure=np.ones((3, 3)))
        for c in range(1, k + 1):
            full = np.zeros(masks.shape, bool)
            full[i] = lab == c
            comps.append(full)
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:  # high to low
        above = maps >= t
        fprs.append((above & normal).sum() / normal.sum())
        pros.append(np.mean([above[c].mean() for c in comps]))
    fprs, pros = np.array(fprs), np.array(pros)
    # integrate up to fpr_limit, interpolating PRO at the limit
    j = np.searchsorted(fprs, fpr_limit, side="right")  # first point beyond the limit
    xs, ys = list(fprs[:j]), list(pros[:j])
    if xs[-1] < fpr_limit:
        xs.append(fpr_limit)
        ys.append(np.interp(fpr_limit, fprs[j - 1 : j + 1], pros[j - 1 : j + 1]))
    area = sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2 for i in range(len(xs) - 1))
    return area / fpr_limit


def random_case(seed, n=6, size=12, quantise=None):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n // 2):
        for _ in range(rng.integers(1, 3)):
            y, x = rng.integers(0, size - 3, 2)
            h, w = rng.integers(1, 5, 2)
            masks[i, y : y + h, x : x + w] = 1
    maps = rng.random((n, size, size)) + 0.4 * masks
    if quantise:  # many ties, some shared by normal and defect pixels
        maps = np.round(maps * quantise) / quantise
    return masks, maps.astype(np.float32)


def test_aupro_known_components():
    # Image 0: a 2x2 defect fully above every normal pixel; image 1: a 1x4 defect half detected.
    masks = np.zeros((2, 6, 6), np.uint8)
    masks[0, 1:3, 1:3] = 1
    masks[1, 4, 0:4] = 1
    maps = np.zeros((2, 6, 6), np.float32)
    maps[0, 1:3, 1:3] = 1.0
    maps[1, 4, 0:2] = 1.0
    # At t=1: FPR 0, PRO = (1 + 0.5)/2 = 0.75; then at t=0 FPR jumps to 1 and PRO to 1.
    # Up to 0.3: a trapezoid from (0, 0.75) to (0.3, 0.75 + 0.25 * 0.3) -> mean 0.7875.
    assert metrics.aupro(masks, maps) == pytest.approx(0.7875)
    assert slow_aupro(masks, maps) == pytest.approx(0.7875)
    # Diagonal neighbours are one component (8-connectivity, as MVTec's evaluation):
    # {(1,1), (1,2)} and (2,3) form one 3-px region, so detecting (2,3) alone gives PRO 1/3
    # (4-connectivity would give two regions and PRO 1/2).
    m = np.zeros((1, 5, 5), np.uint8)
    m[0, 1, 1:3] = m[0, 2, 3] = 1
    a = np.zeros((1, 5, 5), np.float32)
    a[0, 2, 3] = 1.0
    fpr, pro = metrics.pro_curve(m, a)
    assert fpr[1] == 0 and pro[2] == pytest.approx(1 / 3)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("quantise", [None, 4])
@pytest.mark.parametrize("limit", [0.3, 0.05, 1.0])
def test_aupro_matches_slow_reference(seed, quantise, limit):
    masks, maps = random_case(seed, quantise=quantise)
    assert metrics.aupro(masks, maps, fpr_limit=limit) == pytest.approx(slow_aupro(masks, maps, limit), abs=1e-9)


def test_aupro_perfect_and_torch_inputs():
    masks, _ = random_case(0)
    maps = masks.astype(np.float32) + 0.1
    assert metrics.aupro(torch.from_numpy(masks), torch.from_numpy(maps)) == pytest.approx(1.0)


@pytest.mark.parametrize("quantise", [None, 3])
def test_pixel_auroc_matches_sklearn(quantise):
    masks, maps = random_case(1, n=8, size=16, quantise=quantise)
    want = roc_auc_score(masks.ravel(), maps.ravel())
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(want, abs=1e-12)
    assert metrics.pixel_auroc(torch.from_numpy(masks), torch.from_numpy(maps)) == pytest.approx(want, abs=1e-12)


def test_image_auroc_matches_sklearn_and_undefined_is_nan():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 50)
    scores = rng.random(50) + 0.3 * labels
    assert metrics.image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    with pytest.warns(UserWarning, match="undefined"):
        assert math.isnan(metrics.image_auroc(np.zeros(5), scores[:5]))
    with pytest.warns(UserWarning, match="undefined"):
        assert math.isnan(metrics.pixel_auroc(np.zeros((2, 4, 4)), np.ones((2, 4, 4))))
    with pytest.warns(UserWarning, match="undefined"):
        assert math.isnan(metrics.aupro(np.zeros((2, 4, 4)), np.ones((2, 4, 4))))
    with pytest.raises(ValueError, match="NaN"):
        metrics.image_auroc(labels, np.full(50, np.nan))


def test_f1_at_threshold_and_f1_max_match_sklearn():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 40)
    scores = rng.random(40) + 0.5 * labels
    r = metrics.f1_at_threshold(labels, scores, 0.7)
    assert r["f1"] == pytest.approx(f1_score(labels, scores > 0.7))
    assert r["precision"] == pytest.approx(((scores > 0.7) & (labels == 1)).sum() / (scores > 0.7).sum())
    assert r["recall"] == pytest.approx(((scores > 0.7) & (labels == 1)).sum() / labels.sum())
    # the oracle is the best F1 over every threshold (slow reference: try each score)
    best = max(f1_score(labels, scores >= t) for t in np.unique(scores))
    assert metrics.f1_max(labels, scores) == pytest.approx(best)
    assert metrics.f1_max(labels, scores) >= r["f1"]
    # nothing predicted defective: precision 0 by convention, not an error
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert metrics.f1_at_threshold(labels, scores, 10.0) == {"f1": 0.0, "precision": 0.0, "recall": 0.0}
    assert all(math.isnan(v) for v in metrics.f1_at_threshold(labels, scores, math.nan).values())


def test_f1_floor_is_the_f1_of_calling_every_image_defective():
    for labels in ([0, 0, 1], [0, 1, 1, 1, 1], [1, 0, 1, 0, 0, 0, 0]):
        p = np.mean(labels)
        assert metrics.f1_floor(labels) == pytest.approx(2 * p / (1 + p))
        assert metrics.f1_floor(labels) == pytest.approx(metrics.f1_at_threshold(labels, np.zeros(len(labels)),
                                                                                 -1.0)["f1"])
