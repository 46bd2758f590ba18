"""Bootstrap intervals and paired model comparison."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from celltune.evaluation import stats
from celltune.evaluation.stats import (
    bootstrap_ci,
    decide,
    holm,
    paired_test,
    paired_tests,
    rank_direction,
    seed_image_interval,
    sign_flip_p,
)


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


def _outlier_example() -> tuple[np.ndarray, np.ndarray]:
    """19 of 20 images favour A by 0.01-0.02, one favours B by 0.5."""
    b = np.random.default_rng(4).uniform(0.6, 0.8, 20)
    diff = np.append(np.linspace(0.01, 0.02, 19), -0.5)
    return b + diff, b


def test_one_outlier_against_nineteen_small_wins_is_neither():
    a, b = _outlier_example()
    result = paired_test(a, b)
    # The ranks favour A strongly, the mean favours B: the evidence disagrees.
    assert result["wilcoxon_p"] < 0.001
    assert result["rank_direction"] == 1 and result["mean_diff"] < 0
    assert result["ci_low"] < 0 < result["ci_high"]
    assert result["ci_low"] == pytest.approx(-0.063, abs=0.01)
    assert result["ci_high"] == pytest.approx(0.016, abs=0.005)
    assert result["better"] == "neither"
    assert paired_test(b, a)["better"] == "neither"


def test_clear_win_is_still_detected_with_holm():
    rng = np.random.default_rng(5)
    b = rng.uniform(0.5, 0.8, 30)
    win = b + rng.normal(0.05, 0.02, 30)
    noise = b + rng.normal(0, 0.05, 30)
    outlier_a, outlier_b = _outlier_example()
    results = paired_tests([(win, b), (noise, b), (outlier_a, outlier_b), (b, win)])
    assert [r["better"] for r in results] == ["a", "neither", "neither", "b"]
    raw = [r["wilcoxon_p"] for r in results]
    assert [r["p_holm"] for r in results] == pytest.approx(holm(raw))
    assert all(r["p_holm"] >= r["wilcoxon_p"] for r in results)


def test_holm_by_hand():
    # Sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> 0.06
    # (monotone), returned in the order given.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.2]) == pytest.approx([0.2])
    assert holm([]) == []
    with pytest.raises(ValueError):
        holm([0.1, 1.5])


def test_holm_can_turn_a_single_test_win_into_neither():
    rng = np.random.default_rng(6)
    b = np.linspace(0.6, 0.8, 12)
    diff = [0.03, 0.02, 0.04, -0.02, 0.01, 0.05, -0.015, 0.025, 0.035, -0.005, 0.015, 0.02]
    a = b + np.array(diff)
    alone = paired_test(a, b)
    assert alone["better"] == "a" and 0.05 / 10 < alone["wilcoxon_p"] < 0.05
    many = paired_tests([(a, b)] + [(b + rng.normal(0, 0.05, 12), b) for _ in range(9)])
    assert many[0]["p_holm"] > 0.05 and many[0]["better"] == "neither"


def test_decide_and_rank_direction():
    assert rank_direction([0.1, 0.2, -0.05]) == 1
    assert rank_direction([-0.1, -0.2, 0.05]) == -1
    assert rank_direction([0.0, 0.0]) == 0
    assert decide(0.01, 0.05, 0.01, 1) == "a"
    assert decide(-0.05, -0.01, 0.01, -1) == "b"
    assert decide(0.01, 0.05, 0.01, -1) == "neither"  # ranks disagree with the interval
    assert decide(-0.01, 0.05, 0.01, 1) == "neither"  # interval contains 0
    assert decide(0.01, 0.05, 0.2, 1) == "neither"  # p too large


def test_seed_image_interval_covers_seed_spread():
    rng = np.random.default_rng(7)
    base = rng.uniform(0.5, 0.8, 25)
    a = base + 0.03 + rng.normal(0, 0.01, (3, 25))
    b = base + rng.normal(0, 0.01, (3, 25))
    mean, low, high = seed_image_interval(a, b)
    assert mean == pytest.approx(float((a - b).mean()))
    assert 0 < low < mean < high
    assert seed_image_interval(a, b) == (mean, low, high)  # deterministic
    # A recipe whose seeds disagree a lot gets a wider interval than one whose seeds agree.
    shaky = base + 0.03 + np.array([[-0.1], [0.0], [0.1]]) + rng.normal(0, 0.01, (3, 25))
    _, slow, shigh = seed_image_interval(shaky, b)
    assert shigh - slow > 3 * (high - low)
    # One seed per recipe reduces to the image bootstrap of the paired differences.
    _, low1, high1 = seed_image_interval(a[:1], b[:1])
    assert low1 < float((a[0] - b[0]).mean()) < high1
    with pytest.raises(ValueError, match="same images"):
        seed_image_interval(a, b[:, :5])


def test_module_examples_run():
    assert doctest.testmod(stats).failed == 0
