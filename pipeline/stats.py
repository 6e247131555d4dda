"""Paired bootstrap verdicts between models: is a difference of mean AUROC more than noise?

For two models A and B, the question is whether the difference of their mean image AUROC
(and mean pixel AUROC), mean over categories and over training seeds, is larger than what
seed-to-seed and test-sample variation produce. All of it is computed from stored per-image
data (one ``ScoreSet`` per model, category and seed), never from numbers written by hand.

Per-image data
  - image scores and labels (0 good, 1 defective);
  - compact pixel summaries: per image, the counts of defect pixels and of normal pixels in
    each of K bins of the anomaly map (``pixel_histograms``), the bins cut at quantiles of
    the score set's pooled map values (``histogram_edges``). The pooled pixel AUROC follows from
    the summed counts (``auroc_from_histograms``) with pixels in the same bin counted as
    ties, so the pixel AUROC of any resample of the test images costs no map.

Histogram AUROC error
  Pixels inside one bin are counted half, whatever their order, so
  |AUROC_hist - AUROC_exact| <= sum_k P_k N_k / (2 P N) (``histogram_auroc_error_bound``),
  with P_k, N_k the defect / normal pixels in bin k. Quantile bins hold about 1/K of all
  pixels each, so the bound is about 1/(2K) (1e-3 at K = 512) and the real error, whose
  signs differ from bin to bin, is far smaller (~1e-5 on smooth noise maps, tested < 1e-3).
  Maps with at most K distinct values get one bin per value, and the AUROC is exact.

Weighted AUROCs (bootstrap replicates, vectorised)
  A resample is a vector of per-image counts w (how often each image was drawn). Both
  AUROCs are a quadratic form in w:
      AUROC(w) = w' M w / ((w . p) (w . n)),
  image:  M_ij = [s_i > s_j] + 1/2 [s_i = s_j] for defective i, good j; p, n = labels, 1 - labels;
  pixel:  M_ij = sum_k pos_ik (N_j,<k + neg_jk / 2), p_i, n_j = defect / normal pixels of image i, j
  (the pixel one is sum_k P_k (N_<k + N_k/2) / (P N) of the weighted histogram sums). M is
  built once per score set (rows: images with positives, columns: images with negatives, at
  most N x N); the score sets of one category share the resamples, so their M are stacked side
  by side and B replicates of R score sets cost one (B, N) @ (N, R N) product, chunked to 32 MiB
  (``weighted_aurocs``): memory O(B N + R N^2), bounded for N ~ 500, B = 2000.

Paired bootstrap (``paired_bootstrap``)
  estimate = mean over categories c of mean over c's shared seeds s of (AUROC_A - AUROC_B)(c, s).
  Replicate: seeds drawn with replacement from the shared seed list (one draw for all
  categories when their seed lists agree), and per category test images drawn with
  replacement, good and defective separately (stratified, so both classes are present),
  the SAME image draw for both models and every seed of that category: that is the pairing,
  which cancels the test-set difficulty the two models share. The interval is the
  percentile interval of the replicate differences; verdict "A > B" if it lies above 0,
  "B > A" below 0, else "no clear difference".
  How good the intervals are (simulation of tests/test_stats.py, 200 repetitions: 3
  categories x 3 seeds, 60 good + 40 defective images, true difference known): with small
  seed-to-seed variation they covered the true difference 99 % of the time, about 1.35 times
  wider than needed (resampling seeds AND images counts the seed x image noise more than
  once: conservative); with large seed variation (AUROC sd ~0.06 between seeds) 90 %, as 3
  seeds resampled show only (S-1)/S of the seed variance. So "A > B" is a cautious verdict,
  and more seeds sharpen it most when seeds disagree.

Each score set's replicates are computed once, in one batch per category and metric, and
shared by the pairs; how long ``pairwise_verdicts`` takes: bench/README.md, "Train once,
evaluate many".

numpy only (pandas for the table).
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

METRICS = ("image_auroc", "pixel_auroc")
HISTOGRAM_BINS = 512  # quantile bins of the per-image pixel histograms kept for the bootstrap


# --- compact per-image pixel summaries ------------------------------------------------------------


def _as_image_list(arrays) -> list[np.ndarray]:
    """(N, H, W) array or list of 2-D arrays (sizes may differ) -> list of 2-D numpy arrays."""
    if isinstance(arrays, np.ndarray):
        return list(arrays[None] if arrays.ndim == 2 else arrays)
    return [np.asarray(a) for a in arrays]


def histogram_edges(maps, n_bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """Bin edges (K+1,), float64, edges[0] = -inf, edges[-1] = +inf, strictly increasing, K <= n_bins.

    Bin k holds the values v with edges[k] <= v < edges[k+1]. The cuts are at the pooled
    values' quantiles j / n_bins (duplicates dropped), so every bin holds about 1/n_bins of
    all pixels; a value tied over several quantiles (e.g. many exact zeros) gets a bin of
    its own (a cut just after it, using the bins its duplicates freed), since exact ties
    cost no accuracy. With at most ``n_bins`` distinct values, each value has its own bin.
    ``maps``: (N, H, W) array or list of 2-D arrays of different sizes.
    """
    assert n_bins >= 1, f"n_bins must be >= 1, got {n_bins}"
    images = _as_image_list(maps)
    if not images:
        raise ValueError("no maps given: cannot place histogram bins")
    values = np.sort(np.concatenate([a.ravel() for a in images]))  # pooled, ascending
    if not np.isfinite(values).all():
        raise ValueError("anomaly maps contain NaN or infinite values; the model's output is not usable.")
    distinct = values[np.r_[True, values[1:] != values[:-1]]]
    if distinct.size <= n_bins:
        cuts = distinct[1:]  # bin k holds exactly the k-th distinct value
    else:
        total = values.size
        positions = np.arange(1, n_bins) * total // n_bins
        cuts, repeats = np.unique(values[positions], return_counts=True)
        run_ends = np.searchsorted(values, cuts[repeats > 1], side="right")  # first index after each tie run
        after_ties = values[run_ends[run_ends < total]]  # one new cut per run, fewer than the duplicates dropped
        cuts = np.unique(np.r_[cuts, after_ties])
    return np.r_[-np.inf, cuts.astype(np.float64), np.inf]


def pixel_histograms(masks, maps, edges) -> tuple[np.ndarray, np.ndarray]:
    """Per image, defect and normal pixel counts per bin: (pos_counts, neg_counts), each (N, K) int64.

    ``masks`` 0/1 (any nonzero = defect) and ``maps``: (N, H, W) arrays or lists of 2-D
    arrays (each mask the size of its map); ``edges`` from ``histogram_edges``.
    """
    edges = np.asarray(edges, np.float64)
    cuts = edges[1:-1]  # value v goes to bin = number of cuts <= v
    n_bins = edges.size - 1
    mask_list, map_list = _as_image_list(masks), _as_image_list(maps)
    assert len(mask_list) == len(map_list), f"{len(mask_list)} masks but {len(map_list)} maps"
    pos = np.zeros((len(map_list), n_bins), np.int64)
    neg = np.zeros((len(map_list), n_bins), np.int64)
    for i, (mask, amap) in enumerate(zip(mask_list, map_list)):
        assert mask.shape == amap.shape, f"image {i}: mask {mask.shape} and map {amap.shape} differ"
        if not np.isfinite(amap).all():
            raise ValueError(f"anomaly map {i} contains NaN or infinite values; the model's output is not usable.")
        bins = np.searchsorted(cuts, amap.ravel(), side="right")
        defect = mask.ravel() != 0
        pos[i] = np.bincount(bins[defect], minlength=n_bins)
        neg[i] = np.bincount(bins[~defect], minlength=n_bins)
    return pos, neg


def auroc_from_histograms(pos_counts, neg_counts) -> float:
    """Pooled AUROC from binned counts, ties inside a bin counted half.

    AUROC = sum_k P_k (N_<k + N_k / 2) / (sum P * sum N), with P_k, N_k the defect / normal
    pixels in bin k and N_<k the normal pixels in lower bins. Inputs (K,) or (N, K) (summed
    over images). NaN if one class is absent.
    """
    pos = np.asarray(pos_counts, np.float64).reshape(-1, np.shape(pos_counts)[-1]).sum(axis=0)  # (K,)
    neg = np.asarray(neg_counts, np.float64).reshape(-1, np.shape(neg_counts)[-1]).sum(axis=0)
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return math.nan
    neg_below = np.cumsum(neg) - neg
    return float(pos @ (neg_below + neg / 2) / (n_pos * n_neg))


def histogram_auroc_error_bound(pos_counts, neg_counts) -> float:
    """Largest possible |AUROC_hist - AUROC_exact|: sum_k P_k N_k / (2 P N), the within-bin pairs counted half."""
    pos = np.asarray(pos_counts, np.float64).reshape(-1, np.shape(pos_counts)[-1]).sum(axis=0)  # (K,)
    neg = np.asarray(neg_counts, np.float64).reshape(-1, np.shape(neg_counts)[-1]).sum(axis=0)
    if pos.sum() == 0 or neg.sum() == 0:
        return math.nan
    return float(pos @ neg / (2 * pos.sum() * neg.sum()))


# --- score sets: the per-image data of one row ---------------------------------------------------


@dataclass
class ScoreSet:
    """The per-image test data of one model on one category with one seed (one results row).

    labels (N,) 0 good / 1 defective; scores (N,) image scores; pixel_pos / pixel_neg (N, K)
    defect / normal pixel counts per map bin (``pixel_histograms``), or None without masks.
    """

    labels: np.ndarray
    scores: np.ndarray
    pixel_pos: np.ndarray | None = None
    pixel_neg: np.ndarray | None = None

    def __post_init__(self):
        # ValueErrors, not asserts: the arrays are often read from a side file that may be damaged
        # (runs.load_scores), and a check must not vanish under python -O.
        labels = np.asarray(self.labels)
        if labels.dtype.kind not in "biuf":
            raise ValueError(f"labels must be numbers, not {labels.dtype}")
        self.labels = (labels.ravel() != 0).astype(np.int64)
        self.scores = np.asarray(self.scores, np.float64).ravel()
        if self.labels.shape != self.scores.shape:
            raise ValueError(f"{self.labels.size} labels but {self.scores.size} scores")
        if not np.isfinite(self.scores).all():
            raise ValueError("image scores contain NaN or infinite values; the model's output is not usable.")
        if (self.pixel_pos is None) != (self.pixel_neg is None):
            raise ValueError("give both pixel histograms or neither")
        if self.pixel_pos is not None:
            self.pixel_pos = np.asarray(self.pixel_pos, np.int64)
            self.pixel_neg = np.asarray(self.pixel_neg, np.int64)
            n = self.labels.size
            if not (self.pixel_pos.ndim == 2 and self.pixel_pos.shape == self.pixel_neg.shape
                    and self.pixel_pos.shape[0] == n and (self.pixel_pos >= 0).all() and (self.pixel_neg >= 0).all()):
                raise ValueError(f"pixel histograms {self.pixel_pos.shape} / {self.pixel_neg.shape} for {n} images")

    @classmethod
    def from_maps(cls, labels, scores, masks, maps, n_bins: int = HISTOGRAM_BINS) -> ScoreSet:
        """From full maps and masks ((N, H, W) or lists of 2-D arrays): histograms at the maps' own quantiles."""
        pos, neg = pixel_histograms(masks, maps, histogram_edges(maps, n_bins))
        return cls(labels, scores, pos, neg)

    @property
    def has_pixels(self) -> bool:
        return self.pixel_pos is not None

    def image_auroc(self) -> float:
        """Image AUROC of the full test set (ties counted half); NaN with one class only."""
        pair_matrix = image_auroc_form(self.labels, self.scores).matrix
        return float(pair_matrix.mean()) if pair_matrix.size else math.nan

    def pixel_auroc(self) -> float:
        """Pooled pixel AUROC from the histograms; NaN without histograms or with one pixel class only."""
        if not self.has_pixels:
            return math.nan
        return auroc_from_histograms(self.pixel_pos, self.pixel_neg)

    def auroc(self, metric: str) -> float:
        """``metric`` is "image_auroc" or "pixel_auroc"."""
        return self.image_auroc() if _check_metric(metric) == "image_auroc" else self.pixel_auroc()


def _check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    return metric


# --- weighted AUROCs: all bootstrap replicates at once ---------------------------------------------


@dataclass(frozen=True)
class AurocForm:
    """AUROC(w) = w[rows]' matrix w[cols] / ((w . pos_units) (w . neg_units)) for per-image weights w (N,).

    matrix (P, Q): the pair sums between the images with positives (rows) and with negatives
    (cols); pos_units, neg_units (N,): positives / negatives per image (labels, or pixels).
    """

    matrix: np.ndarray
    pos_units: np.ndarray
    neg_units: np.ndarray

    @property
    def rows(self) -> np.ndarray:
        return np.flatnonzero(self.pos_units > 0)  # the images with positives

    @property
    def cols(self) -> np.ndarray:
        return np.flatnonzero(self.neg_units > 0)  # the images with negatives


def image_auroc_form(labels, scores) -> AurocForm:
    """matrix_ij = [s_i > s_j] + 1/2 [s_i = s_j] for defective i, good j; units = labels, 1 - labels."""
    y = np.asarray(labels).ravel() != 0
    s = np.asarray(scores, np.float64).ravel()
    rows, cols = np.flatnonzero(y), np.flatnonzero(~y)
    pos, neg = s[rows][:, None], s[cols][None, :]
    matrix = (pos > neg) + 0.5 * (pos == neg)  # (P, Q)
    return AurocForm(matrix, y.astype(np.float64), (~y).astype(np.float64))


def pixel_auroc_form(pos_counts, neg_counts) -> AurocForm:
    """matrix_ij = sum_k pos_ik (N_j,<k + neg_jk / 2), i images with defect pixels, j with normal ones."""
    pos = np.asarray(pos_counts, np.float64)  # (N, K)
    neg = np.asarray(neg_counts, np.float64)
    pos_units, neg_units = pos.sum(axis=1), neg.sum(axis=1)  # (N,) pixels per image
    rows, cols = np.flatnonzero(pos_units > 0), np.flatnonzero(neg_units > 0)
    neg_below_plus_half = np.cumsum(neg[cols], axis=1) - neg[cols] / 2  # N_j,<k + neg_jk / 2, (Q, K)
    return AurocForm(pos[rows] @ neg_below_plus_half.T, pos_units, neg_units)  # matrix (P, Q)


def auroc_form(score_set: ScoreSet, metric: str) -> AurocForm:
    """The quadratic form of ``metric`` ("image_auroc" / "pixel_auroc") for ``score_set``."""
    if _check_metric(metric) == "image_auroc":
        return image_auroc_form(score_set.labels, score_set.scores)
    if not score_set.has_pixels:
        raise ValueError("pixel AUROC needs the run's pixel histograms (pixel_pos, pixel_neg)")
    return pixel_auroc_form(score_set.pixel_pos, score_set.pixel_neg)


# Score sets evaluated in one matrix product: at most this many (B x score sets x Q) float64 elements (32 MiB).
_BATCH_ELEMENTS = 2**22


def weighted_aurocs(forms: list[AurocForm], weights) -> np.ndarray:
    """AUROC of every form (score sets of the same N test images) for every row of weights (B, N): (B, R).

    The forms are stacked side by side on the union of their rows and columns, so R score sets
    cost one (B, P) @ (P, R Q) product: few large BLAS calls instead of many small ones,
    which matters most when the cores are shared. Chunked to bound memory. NaN where a
    class has zero weight.
    """
    w = np.atleast_2d(np.asarray(weights, np.float64))  # (B, N)
    rows = np.unique(np.concatenate([f.rows for f in forms]))
    cols = np.unique(np.concatenate([f.cols for f in forms]))
    per_chunk = max(1, _BATCH_ELEMENTS // (w.shape[0] * max(cols.size, 1)))
    numerators = []
    for start in range(0, len(forms), per_chunk):
        chunk = forms[start : start + per_chunk]
        stacked = np.zeros((rows.size, len(chunk), cols.size))  # (P, R, Q), each form on the common rows / cols
        for r, form in enumerate(chunk):
            form_slice = stacked[:, r, :]  # a view: (P, Q)
            form_slice[np.ix_(np.searchsorted(rows, form.rows), np.searchsorted(cols, form.cols))] = form.matrix
        products = (w[:, rows] @ stacked.reshape(rows.size, -1)).reshape(w.shape[0], len(chunk), cols.size)
        numerators.append(np.einsum("brq,bq->br", products, w[:, cols]))  # (B, R)
    numerator = np.concatenate(numerators, axis=1)
    pos_units = np.stack([f.pos_units for f in forms], axis=1)  # (N, R)
    neg_units = np.stack([f.neg_units for f in forms], axis=1)
    denominator = (w @ pos_units) * (w @ neg_units)  # (B, R)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def stratified_counts(labels, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Resampling counts (B, N), int32: each row draws the good and the defective images
    separately with replacement, as many as there are of each, so both classes stay present."""
    y = np.asarray(labels).ravel() != 0
    n = y.size
    draws = [idx[rng.integers(0, idx.size, size=(n_boot, idx.size))] for idx in (np.flatnonzero(~y), np.flatnonzero(y))]
    drawn = np.concatenate(draws, axis=1)  # (B, N) image indices
    return _draw_counts(drawn, n).astype(np.int32)


def _draw_counts(drawn: np.ndarray, n: int) -> np.ndarray:
    """(B, n): how often each of n items appears in each row of ``drawn`` (B, M) item indices."""
    n_boot = drawn.shape[0]
    flat = (np.arange(n_boot)[:, None] * n + drawn).ravel()  # replicate b's item i -> b * n + i
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n)


def _stable_hash(x: Any) -> int:
    """Same number in every process (Python's hash() of a str is salted per process)."""
    return zlib.crc32(repr(x).encode())


# --- paired bootstrap -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BootstrapResult:
    """Mean difference A - B of a metric, with its percentile bootstrap interval.

    n_categories: categories used; n_seeds: the fewest shared seeds in a used category;
    n_boot: replicates with a defined difference; skipped: "category: why" for each left out.
    """

    metric: str
    estimate: float
    low: float
    high: float
    n_categories: int
    n_seeds: int
    n_boot: int
    level: float = 0.95
    skipped: tuple[str, ...] = ()

    @property
    def verdict(self) -> str:
        """"A > B" if the interval lies above 0, "B > A" if below, "no clear difference" else ("no data")."""
        if self.n_categories == 0 or math.isnan(self.low):
            return "no data"
        if self.low > 0:
            return "A > B"
        if self.high < 0:
            return "B > A"
        return "no clear difference"


class _ReplicateCache:
    """Image draws per category and replicate AUROCs per score set, shared by all the pairs of one table.

    The image draw of a category depends on (seed, category) only, so every pair compares
    its models on the same resamples, and each score set's B AUROCs are computed once.
    """

    def __init__(self, n_boot: int, seed: int):
        self.n_boot, self.seed = n_boot, seed
        self._counts: dict[Any, np.ndarray] = {}
        self._aurocs: dict[tuple, tuple[float, np.ndarray]] = {}

    def counts(self, category, labels) -> np.ndarray:
        if category not in self._counts:
            rng = np.random.default_rng([self.seed, _stable_hash(("images", category))])
            self._counts[category] = stratified_counts(labels, self.n_boot, rng)
        return self._counts[category]

    def compute(self, score_sets: list[ScoreSet], category, metric: str) -> None:
        """Replicate AUROCs of the score sets not yet cached, all in one batch (they share the test labels)."""
        todo = [s for s in score_sets if (id(s), category, metric) not in self._aurocs]
        if not todo:
            return
        replicates = weighted_aurocs([auroc_form(s, metric) for s in todo], self.counts(category, todo[0].labels))
        for score_set, its_replicates in zip(todo, replicates.T):
            self._aurocs[id(score_set), category, metric] = (score_set.auroc(metric), its_replicates)

    def aurocs(self, score_set: ScoreSet, category, metric: str) -> tuple[float, np.ndarray]:
        """(full-sample AUROC, (B,) replicate AUROCs) of one score set."""
        self.compute([score_set], category, metric)
        return self._aurocs[id(score_set), category, metric]


def _shared_seeds(a: dict, b: dict) -> dict[Any, list]:
    """category -> sorted seeds present for both models."""
    seeds: dict[Any, list] = {}
    for category, seed in sorted(set(a) & set(b), key=repr):
        seeds.setdefault(category, []).append(seed)
    return {category: sorted(s) for category, s in seeds.items()}


def _check_same_test_set(a: dict, b: dict, category, seeds: list) -> None:
    labels = a[category, seeds[0]].labels
    for score_set in [a[category, s] for s in seeds] + [b[category, s] for s in seeds]:
        if not np.array_equal(score_set.labels, labels):
            raise ValueError(
                f"category {category!r}: the two models' test labels differ; "
                "a paired bootstrap needs the same test images"
            )


def _why_undefined(a: dict, b: dict, category, seeds: list, metric: str) -> str | None:
    """Why ``metric`` cannot be compared in this category (None if it can)."""
    score_sets = [a[category, s] for s in seeds] + [b[category, s] for s in seeds]
    labels = score_sets[0].labels
    if labels.min() == labels.max():
        return "one class only in the test set"
    if metric == "pixel_auroc":
        if not all(s.has_pixels for s in score_sets):
            return "no pixel histograms"
        if any(s.pixel_pos.sum() == 0 or s.pixel_neg.sum() == 0 for s in score_sets):
            return "one pixel class only"
    return None


def _seed_counts(n_seeds: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(B, S) float: how often each seed is drawn in each replicate (S draws with replacement)."""
    drawn = rng.integers(0, n_seeds, size=(n_boot, n_seeds))  # (B, S) seed indices
    return _draw_counts(drawn, n_seeds).astype(np.float64)


def _paired_bootstrap(a: dict, b: dict, metric: str, level: float, cache: _ReplicateCache) -> BootstrapResult:
    _check_metric(metric)
    assert 0 < level < 1, f"level must be in (0, 1), got {level}"
    n_boot, seed = cache.n_boot, cache.seed
    used, skipped = {}, []
    for category, seeds in _shared_seeds(a, b).items():
        _check_same_test_set(a, b, category, seeds)
        why = _why_undefined(a, b, category, seeds, metric)
        if why:
            skipped.append(f"{category}: {why}")
        else:
            used[category] = seeds
    if not used:
        return BootstrapResult(metric, math.nan, math.nan, math.nan, 0, 0, 0, level, tuple(skipped))

    seed_lists_agree = len({tuple(s) for s in used.values()}) == 1
    shared_seed_counts = None
    if seed_lists_agree:  # one seed draw per replicate, for every category
        rng = np.random.default_rng([seed, _stable_hash("seeds")])
        shared_seed_counts = _seed_counts(len(next(iter(used.values()))), n_boot, rng)

    estimates, replicates = [], []
    for category, seeds in used.items():
        cache.compute([a[category, s] for s in seeds] + [b[category, s] for s in seeds], category, metric)
        full_a, boot_a = zip(*(cache.aurocs(a[category, s], category, metric) for s in seeds))
        full_b, boot_b = zip(*(cache.aurocs(b[category, s], category, metric) for s in seeds))
        estimates.append(np.mean(np.subtract(full_a, full_b)))
        diff = np.stack(boot_a) - np.stack(boot_b)  # (S, B)
        if shared_seed_counts is not None:
            seed_counts = shared_seed_counts
        else:
            rng = np.random.default_rng([seed, _stable_hash("seeds"), _stable_hash(category)])
            seed_counts = _seed_counts(len(seeds), n_boot, rng)
        replicates.append(np.einsum("bs,sb->b", seed_counts, diff) / len(seeds))  # mean over drawn seeds, (B,)

    replicates = np.stack(replicates)  # (C, B)
    # A replicate is NaN in a category only if its draw left no pixel of one class (defective
    # images with empty masks); it then averages the other categories, or is dropped if none.
    defined = ~np.isnan(replicates).all(axis=0)
    with np.errstate(invalid="ignore"):
        replicate_diffs = np.nanmean(replicates[:, defined], axis=0)  # mean over categories, (B',)
    low, high = np.quantile(replicate_diffs, [(1 - level) / 2, (1 + level) / 2])
    return BootstrapResult(
        metric=metric,
        estimate=float(np.mean(estimates)),
        low=float(low),
        high=float(high),
        n_categories=len(used),
        n_seeds=min(len(s) for s in used.values()),
        n_boot=int(defined.sum()),
        level=level,
        skipped=tuple(skipped),
    )


def paired_bootstrap(a: dict, b: dict, metric: str, *, n_boot: int = 2000, level: float = 0.95,
                     seed: int = 0) -> BootstrapResult:
    """Mean ``metric`` difference A - B over categories and seeds, with a paired percentile bootstrap interval.

    ``a``, ``b``: (category, seed) -> ScoreSet of model A and model B; the (category, seed)
    keys present in both are used. Per category the test labels must be identical
    (ValueError naming the category otherwise). estimate = mean_c mean_{s in S_c} (AUC_A - AUC_B)(c, s)
    on the full test sets; each of ``n_boot`` replicates redraws the seeds (once for all
    categories when the seed lists agree) and, per category, the test images stratified by
    label, the same images for both models and all seeds (module docstring). Categories
    where the metric is undefined (one class, or no histograms for "pixel_auroc") are
    skipped and named in ``skipped``. Deterministic for a fixed ``seed``.
    """
    return _paired_bootstrap(a, b, metric, level, _ReplicateCache(n_boot, seed))


def _named_verdict(result: BootstrapResult, model_a: str, model_b: str) -> str:
    return {"A > B": f"{model_a} better", "B > A": f"{model_b} better"}.get(result.verdict, result.verdict)


def _compute_all(by_model: dict[str, dict], metrics, cache: _ReplicateCache) -> None:
    """Fill the cache with every model's score sets per category and metric at once: one batch each
    (score sets whose labels differ from the category's first, or lacking histograms, are left to the pairs)."""
    by_category: dict[Any, list[ScoreSet]] = {}
    for model_score_sets in by_model.values():
        for (category, _), score_set in sorted(model_score_sets.items(), key=lambda item: repr(item[0])):
            by_category.setdefault(category, []).append(score_set)
    for category, score_sets in by_category.items():
        first = score_sets[0]
        same_test_set = [s for s in score_sets if np.array_equal(s.labels, first.labels)]
        if first.labels.min() == first.labels.max():
            continue  # one class: no AUROC to bootstrap
        for metric in metrics:
            usable = same_test_set if metric == "image_auroc" else [s for s in same_test_set if s.has_pixels]
            if usable:
                cache.compute(usable, category, metric)


def pairwise_verdicts(score_sets: dict, models: list[str], metrics=METRICS, *, n_boot: int = 2000,
                      level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """One row per unordered pair of ``models`` (in that order) and metric: the paired bootstrap of a - b.

    ``score_sets``: (model, category, seed) -> ScoreSet. Columns: model_a, model_b, metric,
    estimate (a - b), low, high, n_categories, n_seeds, verdict ("<a> better", "<b> better",
    "no clear difference", or "no data"). Every pair sees the same image draws per category,
    and each score set's replicate AUROCs are computed once. Deterministic for a fixed ``seed``.
    """
    by_model: dict[str, dict] = {m: {} for m in models}
    for (model, category, its_seed), score_set in score_sets.items():
        if model in by_model:
            by_model[model][category, its_seed] = score_set
    cache = _ReplicateCache(n_boot, seed)
    _compute_all(by_model, metrics, cache)
    rows = []
    for i, model_a in enumerate(models):
        for model_b in models[i + 1 :]:
            for metric in metrics:
                result = _paired_bootstrap(by_model[model_a], by_model[model_b], metric, level, cache)
                rows.append({
                    "model_a": model_a,
                    "model_b": model_b,
                    "metric": metric,
                    "estimate": result.estimate,
                    "low": result.low,
                    "high": result.high,
                    "n_categories": result.n_categories,
                    "n_seeds": result.n_seeds,
                    "verdict": _named_verdict(result, model_a, model_b),
                })
    columns = ["model_a", "model_b", "metric", "estimate", "low", "high", "n_categories", "n_seeds", "verdict"]
    return pd.DataFrame(rows, columns=columns)
