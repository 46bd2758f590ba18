"""Bootstrap intervals and paired model comparison."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from celltune.evaluation import stats
from celltune.evaluation.stats import bootstrap_ci, paired_test, sign_flip_p


def test_ci_contains_the_mean_and_is_deterministic():
    values = np.random.default_rng(0).beta(5, 2, size=40)
    low, high = bootstrap_ci(values)
    assert low < values.mean() < high
    assert bootstrap_ci(values) == (low, high)
    assert bootstrap_ci(values, seed=1) != (low, high)
    # A 95% interval of the mean is roughly mean +- 1.96 standard errors.
    se = values.std(ddof=1) / np.sqrt(values.size)
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.25)


def test_ci_narrows_with_more_data_and_higher_confidence_widens_it():
    rng = np.random.default_rng(1)
    small, large = rng.normal(0.7, 0.1, 20), rng.normal(0.7, 0.1, 2000)
    width = lambda lo_hi: lo_hi[1] - lo_hi[0]  # noqa: E731
    assert width(bootstrap_ci(large)) < 0.3 * width(bootstrap_ci(small))
    assert width(bootstrap_ci(small, level=0.99)) > width(bootstrap_ci(small, level=0.8))


def test_ci_edge_cases():
    assert bootstrap_ci([0.42]) == (0.42, 0.42)
    assert bootstrap_ci([0.5] * 7) == (0.5, 0.5)
    with pytest.raises(ValueError, match="empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([0.1, float("nan")])
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([0.1, 0.2], level=1.5)


def test_paired_test_detects_a_clear_difference():
    rng = np.random.default_rng(2)
    b = rng.uniform(0.5, 0.8, 30)
    a = b + rng.normal(0.05, 0.02, 30)
    result = paired_test(a, b)
    assert result["wilcoxon_p"] < 0.05 and result["permutation_p"] < 0.05
    assert result["better"] == "a"
    assert result["mean_diff"] == pytest.approx(float(np.mean(a - b)))
    assert result["ci_low"] > 0 and result["ci_low"] < result["mean_diff"] < result["ci_high"]
    assert paired_test(b, a)["better"] == "b"


def test_paired_test_does_not_detect_a_null_difference():
    rng = np.random.default_rng(3)
    base = rng.uniform(0.5, 0.8, 30)
    a = base + rng.normal(0, 0.05, 30)
    b = base + rng.normal(0, 0.05, 30)
    result = paired_test(a, b)
    assert result["wilcoxon_p"] > 0.05 and result["permutation_p"] > 0.05
    assert result["better"] == "neither"
    assert result["ci_low"] < 0 < result["ci_high"]


def test_identical_scores_do_not_crash():
    a = [0.7, 0.8, 0.9]
    result = paired_test(a, a)
    assert result["wilcoxon_p"] == 1.0 and result["permutation_p"] == 1.0
    assert result["mean_diff"] == 0.0 and result["better"] == "neither"
    assert (result["ci_low"], result["ci_high"]) == (0.0, 0.0)


def test_sign_flip_exact_p_value_by_hand():
    # Three positive differences: of the 8 sign patterns only +++ and --- reach |mean| = 2.
    assert sign_flip_p([1.0, 2.0, 3.0]) == pytest.approx(2 / 8)
    # Zeros carry no sign information and are dropped.
    assert sign_flip_p([0.0, 1.0, 2.0, 3.0, 0.0]) == pytest.approx(2 / 8)
    # Monte Carlo branch (more than 14 differences): p is (extreme + 1) / (n + 1) > 0.
    p = sign_flip_p(np.full(20, 0.1), n=999)
    assert p == pytest.approx(1 / 1000, abs=2 / 1000)


def test_paired_test_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="same images"):
        paired_test([0.1, 0.2], [0.1])


def test_module_examples_run():
    assert doctest.testmod(stats).failed == 0
