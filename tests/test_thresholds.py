"""Decision-threshold rules (pipeline/thresholds.py): formulas on known numbers, robustness, errors."""
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import make_tiny_mvtec
from models.errors import ConfigError
from pipeline import report
from pipeline.__main__ import main
from pipeline.evaluate import EvalConfig
from pipeline.job import config_hash
from pipeline.thresholds import (
    DEFAULT_THRESHOLD_RULE,
    FEW_VAL_IMAGES,
    THRESHOLD_RULES,
    canonical_threshold_rule,
    check_threshold_rule,
    few_val_warning,
    val_threshold,
)

ROOT = Path(__file__).resolve().parents[1]

VAL = np.arange(1.0, 11.0)  # 1..10: median 5.5, MAD 2.5, mean 5.5, population sd sqrt(8.25)


@pytest.mark.parametrize("rule, expected", [
    ("val_max", 10.0),
    ("val_p100", 10.0),
    ("val_p0", 1.0),
    ("val_p50", 5.5),
    ("val_p90", 9.1),  # linear interpolation: position 0.9 * 9 = 8.1 -> 9 + 0.1
    ("val_p99.5", 9.955),
    ("val_mean+0std", 5.5),
    ("val_mean+2std", 5.5 + 2 * math.sqrt(8.25)),
    ("val_median+0mad", 5.5),
    ("val_median+3mad", 5.5 + 3 * 1.482602218505602 * 2.5),
    ("val_median+2.5mad", 5.5 + 2.5 * 1.482602218505602 * 2.5),
])
def test_rule_formulas(rule, expected):
    assert val_threshold(VAL, rule) == pytest.approx(expected)


def test_lognorm_is_a_robust_lognormal_quantile():
    s = np.exp(VAL / 10)  # log scores 0.1 .. 1.0: median 0.55, MAD 0.25
    z95 = 1.6448536269514722
    expected = math.exp(0.55 + z95 * 1.482602218505602 * 0.25)
    assert val_threshold(s, "val_lognorm_p95") == pytest.approx(expected)
    assert val_threshold(s, "val_lognorm_p50") == pytest.approx(math.exp(0.55))
    with pytest.raises(ValueError, match="positive"):
        val_threshold([0.0, 1.0, 2.0], "val_lognorm_p95")


def test_inputs_numpy_tensor_list_agree():
    for rule in ("val_max", "val_p95", "val_mean+3std", "val_median+3mad", "val_lognorm_p99"):
        a = val_threshold(VAL, rule)
        assert val_threshold(torch.tensor(VAL, dtype=torch.float32), rule) == pytest.approx(a)
        assert val_threshold(list(VAL), rule) == pytest.approx(a)
        assert val_threshold(VAL.reshape(2, 5), rule) == pytest.approx(a)
        assert isinstance(a, float)


def test_default_rule_is_valid_and_listed():
    assert DEFAULT_THRESHOLD_RULE == "val_median+2mad"  # measured: bench/README.md, "Threshold rules"
    check_threshold_rule(DEFAULT_THRESHOLD_RULE)
    assert "val_median+Kmad (e.g. val_median+2mad)" in THRESHOLD_RULES
    assert val_threshold(VAL) == val_threshold(VAL, DEFAULT_THRESHOLD_RULE)


def test_default_is_robust_to_one_odd_val_image():
    """Why the default was chosen: one odd normal among many val scores moves it little,
    while val_max (the old default) jumps to the outlier."""
    rng = np.random.default_rng(0)
    clean = np.exp(rng.normal(-3.0, 0.2, 75))  # right-skewed, like residual energies
    odd = np.r_[clean, clean.max() * 5]
    before, after = val_threshold(clean), val_threshold(odd)
    spread = np.percentile(clean, 75) - np.percentile(clean, 25)
    assert abs(after - before) < 0.1 * spread
    assert before > np.median(clean) and after < odd.max() / 2
    assert val_threshold(odd, "val_max") == odd.max()
    # and it flags only a small share of the clean normals themselves
    assert (clean > before).mean() < 0.1


def test_tied_scores_fall_back_to_mean_absolute_deviation():
    s = np.array([2.0, 2.0, 2.0, 2.0, 6.0])  # MAD = 0: over half tie
    expected = 2.0 + 3 * 1.2533141373155001 * (4.0 / 5)
    assert val_threshold(s, "val_median+3mad") == pytest.approx(expected)
    assert val_threshold(np.full(4, 0.7), "val_median+3mad") == pytest.approx(0.7)


@pytest.mark.parametrize("rule", ["val_max", "val_p95", "val_mean+3std", "val_median+3mad", "val_lognorm_p99",
                                  DEFAULT_THRESHOLD_RULE])
@pytest.mark.parametrize("val", [[0.03], [0.03, 0.05], [0.05, 0.03, 0.04], [0.04, 0.04]])
def test_few_val_scores_give_a_finite_threshold(rule, val):
    t = val_threshold(val, rule)
    assert math.isfinite(t) and t >= min(val) * (1 - 1e-12)  # exp(log(x)) may round below x


def test_default_with_two_or_three_val_scores():
    # n = 2: median + 2 * 1.4826 * |a - b| / 2, above the max (a spread cannot be told from 2 images)
    assert val_threshold([1.0, 2.0]) == pytest.approx(1.5 + 2 * 1.482602218505602 * 0.5)
    # n = 3 with one odd image: stays near the two alike ones, not at the odd one
    t = val_threshold([1.0, 1.1, 5.0])
    assert t == pytest.approx(1.1 + 2 * 1.482602218505602 * 0.1)
    assert val_threshold([0.5]) == 0.5  # n = 1: the score itself


@pytest.mark.parametrize("rule", ["val_p150", "val_p-1", "val_mean+-1std", "val_mean-1std", "val_median+mad",
                                  "val_median+3", "test_max", "VAL_MAX", " val_max", "val_lognorm_p100",
                                  "val_lognorm_p0", "val_p1e2", "", None, 3])
def test_bad_rules_raise_with_the_valid_forms(rule):
    with pytest.raises(ValueError, match="unknown threshold rule") as err:
        check_threshold_rule(rule)
    msg = str(err.value)
    assert all(form in msg for form in THRESHOLD_RULES)
    assert "\n" not in msg and msg.startswith("unknown threshold rule") and not msg.endswith(".")  # one sentence
    with pytest.raises(ValueError, match="unknown threshold rule"):
        val_threshold(VAL, rule)


def test_bad_rule_is_refused_even_without_scores():
    with pytest.raises(ValueError, match="unknown threshold rule"):
        val_threshold([], "val_p150")


def test_empty_is_nan_with_a_warning():
    for empty in ([], np.array([]), torch.empty(0)):
        with pytest.warns(UserWarning, match="no val images"):
            assert math.isnan(val_threshold(empty))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_scores_raise(bad):
    with pytest.raises(ValueError, match="NaN or infinite"):
        val_threshold([0.1, bad, 0.2])


def test_val_max_flags_no_val_image():
    """An image is defective when score > threshold, so a score equal to it is not flagged."""
    val = np.array([0.1, 0.3, 0.2])
    assert not (val > val_threshold(val, "val_max")).any()


# Issue 20: spellings of one rule are one rule (one key, one row).

@pytest.mark.parametrize("spellings", [
    ("val_max", "val_p100", "val_p100.0", "val_p0100"),  # the 100th percentile is the max
    ("val_p50", "val_p50.0", "val_p050", "val_median+0mad", "val_median+0.00mad"),  # the median
    ("val_mean+2std", "val_mean+2.0std", "val_mean+02.000std"),
    ("val_median+2mad", "val_median+2.0mad"),
    ("val_median+2.5mad", "val_median+2.50mad"),
    ("val_p99.5", "val_p99.50"),
    ("val_lognorm_p95", "val_lognorm_p95.0"),
])
def test_spellings_of_one_rule_give_one_key_and_one_threshold(spellings):
    configs = [EvalConfig(threshold_rule=rule) for rule in spellings]
    assert {c.threshold_rule for c in configs} == {spellings[0]}  # what the row's threshold_rule shows
    assert len({json.dumps(c.to_dict(), sort_keys=True) for c in configs}) == 1  # what config_hash hashes
    for rule in spellings:
        assert val_threshold(VAL, rule) == pytest.approx(val_threshold(VAL, spellings[0]))
    assert canonical_threshold_rule(spellings[-1]) == spellings[0]


def test_other_rules_keep_their_spelling_and_bad_ones_are_still_named():
    for rule in ("val_p0", "val_p95", "val_mean+0std", "val_median+3mad", "val_lognorm_p50", DEFAULT_THRESHOLD_RULE):
        assert canonical_threshold_rule(rule) == rule
    with pytest.raises(ConfigError, match="unknown threshold rule 'val_p150'"):
        EvalConfig(threshold_rule="val_p150").validate()


def test_the_committed_rows_keep_their_keys():
    """Canonical spelling changes no committed key: each row's eval config reads back unchanged."""
    rows = pd.read_csv(ROOT / "evaluation_results_all_models.csv")
    for text in rows["config_json"]:
        config = json.loads(text)
        assert EvalConfig.from_dict(config["eval"]).to_dict() == config["eval"]
        assert config_hash(config) in set(rows["config_hash"])


# Issue 20, item 13: a threshold from a handful of val images is said, per category.

def test_a_threshold_from_few_val_images_is_warned_once_per_category_and_footnoted(tmp_path, capsys):
    # 8 train/good: 1 val image. A name of its own: the warning is said once per process and category.
    root = make_tiny_mvtec(tmp_path / "data", categories=("few_val",))
    args = ["run", "--data-root", str(root), "--models", "cae", "vae", "--epochs", "1", "--min-steps", "0",
            "--image-size", "32", "--batch-size", "4", "--results-csv", str(tmp_path / "r.csv"),
            "--checkpoint-dir", str(tmp_path / "ck"), "--no-progress", "--num-threads", "1",
            "--set", "cae.widths=[8,16]", "--set", "vae.widths=[8,16]"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's own: each distinct text once
        assert main(args) == 0
    few = [str(w.message) for w in caught if "val image" in str(w.message)]
    assert few == ["the F1 threshold of 'few_val' rests on 1 val image (val_fraction 0.1 of its 8 train/good "
                   "images), fewer than 10, so its F1, precision and recall depend on which images were held out; "
                   "compare models there by AUROC and AU-PRO, or add normal images to train/good."]
    out = capsys.readouterr().out
    assert "note: F1, precision and recall of few_val (1 val image) come from a threshold on fewer than 10" in out
    rows = pd.read_csv(tmp_path / "r.csv")
    assert (rows["n_val"] == 1).all()  # the row says it too
    assert "few_val (1 val image)" in report.summary(rows, results_csv=tmp_path / "r.csv", n_boot=20)
    table = report.metric_tables(rows)  # the notebook's table, with its footnote
    assert "few_val (1 val image)" in repr(table) and "few_val (1 val image)" in table._repr_html_()
    rows["n_val"] = FEW_VAL_IMAGES
    assert report.few_val_note(rows) == ""


def test_few_val_warning_counts():
    assert few_val_warning("grid", 2, 25, 0.1).startswith("the F1 threshold of 'grid' rests on 2 val images "
                                                          "(val_fraction 0.1 of its 25 train/good images)")
    assert few_val_warning("bottle", FEW_VAL_IMAGES, 100, 0.1) is None
    assert few_val_warning("empty", 0, 1, 0.1) is None  # no val image at all: val_threshold's own NaN warning
