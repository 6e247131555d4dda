"""Paired bootstrap (pipeline/stats.py): histogram AUROC vs exact, weighted AUROC vs scikit-learn on
repeated samples, interval coverage on a case with a known true difference, verdicts."""
import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from pipeline import stats
from pipeline.metrics import pixel_auroc


def smooth_maps(seed, n=16, size=64, defect_fraction=0.5):
    """Realistic anomaly maps: smooth noise, brighter (but overlapping) in elliptic defect regions."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(int(n * defect_fraction)):
        cy, cx = rng.uniform(10, size - 10, 2)
        ry, rx = rng.uniform(3, 9, 2)
        masks[i] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    noise = ndimage.gaussian_filter(rng.normal(size=(n, size, size)), sigma=(0, 2, 2))
    maps = noise / noise.std() + 1.5 * ndimage.gaussian_filter(masks.astype(float), sigma=(0, 2, 2))
    return masks, maps.astype(np.float32)


# --- histogram summaries ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_histogram_auroc_close_to_exact_on_smooth_maps(seed):
    masks, maps = smooth_maps(seed)
    edges = stats.histogram_edges(maps, n_bins=512)
    pos, neg = stats.pixel_histograms(masks, maps, edges)
    assert pos.shape == neg.shape == (16, 512) and pos.dtype == np.int64
    assert pos.sum() + neg.sum() == maps.size and pos.sum() == masks.sum()
    exact = pixel_auroc(masks, maps)
    approx = stats.auroc_from_histograms(pos, neg)
    assert abs(approx - exact) < 1e-3
    assert abs(approx - exact) <= stats.histogram_auroc_error_bound(pos, neg)
    assert stats.auroc_from_histograms(pos.sum(axis=0), neg.sum(axis=0)) == approx  # (K,) or (N, K)


def test_histogram_auroc_exact_with_few_distinct_values():
    masks, maps = smooth_maps(3)
    maps = np.round(maps * 20) / 20  # ~200 distinct values, ties across classes
    assert np.unique(maps).size <= 512
    edges = stats.histogram_edges(maps)
    assert edges.size - 1 == np.unique(maps).size  # one bin per value
    pos, neg = stats.pixel_histograms(masks, maps, edges)
    assert stats.auroc_from_histograms(pos, neg) == pytest.approx(pixel_auroc(masks, maps), abs=1e-12)


def test_histogram_edges_constant_ties_and_bounds():
    edges = stats.histogram_edges(np.full((3, 8, 8), 0.7))
    np.testing.assert_array_equal(edges, [-np.inf, np.inf])
    masks = np.zeros((3, 8, 8))
    masks[0, :2] = 1
    pos, neg = stats.pixel_histograms(masks, np.full((3, 8, 8), 0.7), edges)
    assert stats.auroc_from_histograms(pos, neg) == 0.5

    # half the pixels exactly 0 (a clipped map): 0 gets its own bin, still <= n_bins bins
    masks, maps = smooth_maps(4)
    maps = np.maximum(maps, 0.0)
    edges = stats.histogram_edges(maps, n_bins=64)
    assert edges.size - 1 <= 64 and np.all(np.diff(edges) > 0)
    assert edges[0] == -np.inf and edges[-1] == np.inf
    assert edges[1] == 0.0 and edges[2] == maps[maps > 0].min()  # bin 0 holds exactly the zeros
    pos, neg = stats.pixel_histograms(masks, maps, edges)
    assert abs(stats.auroc_from_histograms(pos, neg) - pixel_auroc(masks, maps)) <= stats.histogram_auroc_error_bound(
        pos, neg
    )
    assert math.isnan(stats.auroc_from_histograms(np.zeros(4), np.ones(4)))


def test_list_of_different_sizes():
    rng = np.random.default_rng(5)
    sizes = [(30, 40), (50, 50), (24, 70), (64, 32)]
    maps = [ndimage.gaussian_filter(rng.normal(size=s), 2).astype(np.float32) for s in sizes]
    masks = [np.zeros(s, np.uint8) for s in sizes]
    masks[0][5:15, 5:20] = 1
    masks[2][:, 30:40] = 1
    for m, a in zip(masks, maps):
        a += m  # defects brighter
    edges = stats.histogram_edges(maps, n_bins=512)
    pos, neg = stats.pixel_histograms(masks, maps, edges)
    assert pos.shape == (4, 512)
    np.testing.assert_array_equal(pos.sum(axis=1) + neg.sum(axis=1), [h * w for h, w in sizes])
    flat_masks = np.concatenate([m.ravel() for m in masks])[None]  # one "image" of all pixels pooled
    flat_maps = np.concatenate([a.ravel() for a in maps])[None]
    assert abs(stats.auroc_from_histograms(pos, neg) - pixel_auroc(flat_masks, flat_maps)) < 1e-3
    score_set = stats.ScoreSet.from_maps([1, 0, 1, 0], [a.max() for a in maps], masks, maps)
    assert score_set.pixel_auroc() == stats.auroc_from_histograms(pos, neg)


# --- weighted AUROCs ----------------------------------------------------------------------------


def weighted_image_auroc(labels, scores, weights) -> np.ndarray:
    """Image AUROC per row of weights (B, N) (per-image resampling counts), (B,): the bootstrap's
    quadratic form of one score set (``stats.weighted_aurocs`` of ``stats.image_auroc_form``)."""
    return stats.weighted_aurocs([stats.image_auroc_form(labels, scores)], weights)[:, 0]


def weighted_pixel_auroc(pos_counts, neg_counts, weights) -> np.ndarray:
    """Pooled pixel AUROC per row of weights (B, N), (B,), from the per-image histograms
    (``stats.weighted_aurocs`` of ``stats.pixel_auroc_form``)."""
    return stats.weighted_aurocs([stats.pixel_auroc_form(pos_counts, neg_counts)], weights)[:, 0]



def test_weighted_image_auroc_equals_sklearn_on_repeated_sample():
    rng = np.random.default_rng(6)
    labels = np.r_[np.zeros(30, int), np.ones(20, int)]
    scores = np.round(rng.normal(size=50) + labels, 1)  # rounded: ties within and across classes
    weights = rng.integers(0, 4, size=(25, 50))
    weights[:, 0] = weights[:, -1] = 1  # both classes present in every row
    got = weighted_image_auroc(labels, scores, weights)
    expected = [roc_auc_score(np.repeat(labels, w), np.repeat(scores, w)) for w in weights]
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert stats.ScoreSet(labels, scores).image_auroc() == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_weighted_pixel_auroc_equals_repeated_images():
    masks, maps = smooth_maps(7, n=10, size=32)
    maps = np.round(maps * 10) / 10  # few distinct values: the histogram AUROC is exact
    pos, neg = stats.pixel_histograms(masks, maps, stats.histogram_edges(maps))
    rng = np.random.default_rng(8)
    weights = rng.integers(0, 3, size=(12, 10))
    weights[:, 0] = 1  # a defective image in every row
    got = weighted_pixel_auroc(pos, neg, weights)
    for w, auc in zip(weights, got):
        assert auc == pytest.approx(stats.auroc_from_histograms(w @ pos, w @ neg), abs=1e-12)
        assert auc == pytest.approx(pixel_auroc(np.repeat(masks, w, axis=0), np.repeat(maps, w, axis=0)), abs=1e-12)


def test_stratified_counts_keep_class_sizes():
    labels = np.r_[np.zeros(7, int), np.ones(3, int)]
    counts = stats.stratified_counts(labels, 100, np.random.default_rng(0))
    assert counts.shape == (100, 10)
    assert (counts[:, :7].sum(axis=1) == 7).all() and (counts[:, 7:].sum(axis=1) == 3).all()


# --- paired bootstrap -----------------------------------------------------------------------------

N_GOOD, N_DEFECT = 60, 40
SEEDS = (0, 1, 2)
CATEGORIES = ("a", "b", "c")


def simulate(rng, shift_a, shift_b, seed_sd=0.1, shared=0.5, with_pixels=False):
    """Per (category, seed): score = (shift + seed effect) * label + image effect (shared by the models
    and seeds: that is what pairing cancels) + own noise, total noise variance 1, so the expected
    AUROC is Phi(shift / sqrt(2 + seed_sd^2))."""
    models = ({}, {})
    labels = np.r_[np.zeros(N_GOOD, int), np.ones(N_DEFECT, int)]
    for category in CATEGORIES:
        image_effect = rng.normal(scale=math.sqrt(shared), size=labels.size)
        for seed in SEEDS:
            for score_sets, shift in zip(models, (shift_a, shift_b)):
                own = rng.normal(scale=math.sqrt(1 - shared), size=labels.size)
                scores = (shift + rng.normal(scale=seed_sd)) * labels + image_effect + own
                pos = neg = None
                if with_pixels:  # 2 x 4 "pixels" per image scored like the image, 2 defects in defective images
                    pixel_scores = scores[:, None, None] + rng.normal(size=(labels.size, 2, 4))  # (N, 2, 4)
                    pixel_masks = np.zeros((labels.size, 2, 4), int)
                    pixel_masks[labels == 1, 0, :2] = 1
                    edges = stats.histogram_edges(pixel_scores, n_bins=64)
                    pos, neg = stats.pixel_histograms(pixel_masks, pixel_scores, edges)
                score_sets[category, seed] = stats.ScoreSet(labels, scores, pos, neg)
    return models


def true_difference(shift_a, shift_b, seed_sd=0.1):
    scale = math.sqrt(2 + seed_sd**2)
    return norm.cdf(shift_a / scale) - norm.cdf(shift_b / scale)


def test_interval_covers_true_difference():
    rng = np.random.default_rng(9)
    truth = true_difference(1.2, 1.0)
    results = [stats.paired_bootstrap(*simulate(rng, 1.2, 1.0), "image_auroc", n_boot=400, seed=r) for r in range(40)]
    covered = np.mean([r.low <= truth <= r.high for r in results])
    assert covered >= 0.85
    estimates = np.array([r.estimate for r in results])
    assert abs(estimates.mean() - truth) < 0.01  # unbiased
    # not absurdly wide: the 95 % interval is near +-1.96 sd of the estimate across repetitions (about 1.35
    # times that here: resampling both seeds and images counts the seed x image noise more than once)
    ratio = np.mean([r.high - r.low for r in results]) / (2 * 1.96 * estimates.std())
    assert 0.6 < ratio < 2.0
    assert all(r.n_categories == 3 and r.n_seeds == 3 and r.n_boot == 400 for r in results)


def test_identical_models_no_difference():
    a, _ = simulate(np.random.default_rng(10), 1.0, 1.0, with_pixels=True)
    b = {key: stats.ScoreSet(r.labels, r.scores.copy(), r.pixel_pos, r.pixel_neg) for key, r in a.items()}
    for metric in stats.METRICS:
        result = stats.paired_bootstrap(a, b, metric, n_boot=200)
        assert result.estimate == 0 and result.low <= 0 <= result.high
        assert result.verdict == "no clear difference"


def test_clearly_better_model_and_table():
    better, worse = simulate(np.random.default_rng(11), 2.0, 0.5, with_pixels=True)
    result = stats.paired_bootstrap(better, worse, "image_auroc", n_boot=300)
    assert result.verdict == "A > B" and result.low > 0
    assert stats.paired_bootstrap(worse, better, "image_auroc", n_boot=300).verdict == "B > A"

    _, similar = simulate(np.random.default_rng(12), 2.0, 2.0, with_pixels=True)
    score_sets = {}
    for model, model_score_sets in (("good", better), ("bad", worse), ("also_good", similar)):
        score_sets.update({(model, category, seed): s for (category, seed), s in model_score_sets.items()})
    table = stats.pairwise_verdicts(score_sets, ["good", "bad", "also_good"], n_boot=300)
    assert list(table.columns) == [
        "model_a", "model_b", "metric", "estimate", "low", "high", "n_categories", "n_seeds", "verdict"
    ]
    assert len(table) == 6  # 3 pairs x 2 metrics
    verdicts = {(r.model_a, r.model_b, r.metric): r.verdict for r in table.itertuples()}
    assert verdicts["good", "bad", "image_auroc"] == "good better"
    assert verdicts["good", "bad", "pixel_auroc"] == "good better"
    assert verdicts["bad", "also_good", "image_auroc"] == "also_good better"
    assert (table["estimate"] > table["low"]).all() and (table["estimate"] < table["high"]).all()
    assert table.equals(stats.pairwise_verdicts(score_sets, ["good", "bad", "also_good"], n_boot=300))  # deterministic
    # the table and paired_bootstrap draw the same replicates
    single = stats.paired_bootstrap(better, worse, "pixel_auroc", n_boot=300)
    row = table[(table.model_a == "good") & (table.model_b == "bad") & (table.metric == "pixel_auroc")].iloc[0]
    assert (row.low, row.high) == (single.low, single.high)


def test_categories_without_pixels_or_seeds_are_left_out():
    a, b = simulate(np.random.default_rng(13), 1.5, 1.0, with_pixels=True)
    a["c", 0] = stats.ScoreSet(a["c", 0].labels, a["c", 0].scores)  # no histograms for one score set
    del b["b", 2]  # category b: seeds 0, 1 only, so the seed lists differ
    image = stats.paired_bootstrap(a, b, "image_auroc", n_boot=200)
    pixel = stats.paired_bootstrap(a, b, "pixel_auroc", n_boot=200)
    assert (image.n_categories, image.n_seeds) == (3, 2)
    assert pixel.n_categories == 2 and pixel.skipped == ("c: no pixel histograms",)
    assert image.low < image.estimate < image.high


def test_mismatched_labels_raise():
    a, b = simulate(np.random.default_rng(14), 1.0, 1.0)
    labels = b["b", 1].labels.copy()
    labels[0] = 1
    b["b", 1] = stats.ScoreSet(labels, b["b", 1].scores)
    with pytest.raises(ValueError, match="'b'"):
        stats.paired_bootstrap(a, b, "image_auroc", n_boot=50)
    with pytest.raises(ValueError, match="unknown metric"):
        stats.paired_bootstrap(a, a, "aupro", n_boot=50)
