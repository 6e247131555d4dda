"""Decision-threshold rules (pipeline/thresholds.py): formulas on known numbers, robustness, errors."""
import math

import numpy as np
import pytest
import torch

from pipeline.thresholds import DEFAULT_THRESHOLD_RULE, THRESHOLD_RULES, check_threshold_rule, val_threshold

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
