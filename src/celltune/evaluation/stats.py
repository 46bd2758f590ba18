"""Uncertainty of per-image scores: bootstrap confidence intervals and paired model comparison.

Example:
    >>> low, high = bootstrap_ci([0.7, 0.8, 0.9, 0.85, 0.75])
    >>> low < 0.8 < high
    True
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

# Resampling is done in blocks of rows so memory stays bounded for large test sets.
_BLOCK_CELLS = 1 << 22
# Sign-flip tests enumerate all 2**m sign patterns up to this many non-zero differences.
_EXACT_MAX = 14


def _values(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name} is empty; need at least one value.")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    return arr


def bootstrap_means(
    values: Sequence[float] | np.ndarray, n: int = 1000, seed: int = 0
) -> np.ndarray:
    """Means of ``n`` resamples (with replacement) of ``values``; deterministic by ``seed``."""
    arr = _values(values, "values")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}.")
    rng = np.random.default_rng(seed)
    rows = max(1, _BLOCK_CELLS // arr.size)
    blocks = []
    for start in range(0, n, rows):
        idx = rng.integers(0, arr.size, size=(min(rows, n - start), arr.size))
        blocks.append(arr[idx].mean(axis=1))
    return np.concatenate(blocks)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray, n: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval for the mean of ``values``.

    Args:
        values: Per-image scores.
        n: Number of bootstrap resamples.
        level: Confidence level in (0, 1).
        seed: Seed of the resampling; the same inputs and seed give the same interval.

    Returns:
        ``(low, high)``: the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the
        resampled means. A single value gives ``(value, value)``.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}.")
    means = bootstrap_means(values, n=n, seed=seed)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def _wilcoxon_p(diff: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value; 1.0 when every difference is zero."""
    from scipy.stats import wilcoxon

    if not np.any(diff):
        return 1.0
    with warnings.catch_warnings():
        # scipy warns when ties or zeros force the normal approximation; the p-value is valid.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(wilcoxon(diff, zero_method="wilcox").pvalue)


def sign_flip_p(diff: Sequence[float] | np.ndarray, n: int = 9999, seed: int = 0) -> float:
    """Two-sided paired permutation p-value for a zero mean difference.

    Under the null each difference is as likely to have either sign, so the observed
    ``|mean|`` is compared with those of sign-flipped copies: all ``2**m`` patterns when there
    are at most 14 non-zero differences (exact), otherwise ``n`` random ones, counting the
    observed pattern too so the p-value is never 0.
    """
    d = _values(diff, "diff")
    d = d[d != 0]
    if d.size == 0:
        return 1.0
    observed = abs(d.mean()) * (1 - 1e-12)  # tolerance so exact ties count as extreme
    if d.size <= _EXACT_MAX:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
        return float(np.mean(np.abs(signs @ d) / d.size >= observed))
    rng = np.random.default_rng(seed)
    rows = max(1, _BLOCK_CELLS // d.size)
    extreme = 0
    for start in range(0, n, rows):
        signs = rng.choice((-1.0, 1.0), size=(min(rows, n - start), d.size))
        extreme += int(np.count_nonzero(np.abs(signs @ d) / d.size >= observed))
    return (extreme + 1) / (n + 1)


def paired_test(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n: int = 9999,
    level: float = 0.95,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Compare two models scored on the same images (``a[i]`` and ``b[i]`` are one image).

    Args:
        a: Per-image scores of model A.
        b: Per-image scores of model B, same images in the same order.
        n: Resamples for the bootstrap interval and the random sign-flip test.
        level: Confidence level of the interval for the mean difference.
        seed: Seed of all resampling.
        alpha: Significance level used for ``better``.

    Returns:
        ``n`` (images), ``mean_a``, ``mean_b``, ``mean_diff`` (A - B), ``ci_low``/``ci_high``
        (bootstrap interval of the mean difference), ``wilcoxon_p`` (two-sided signed-rank),
        ``permutation_p`` (two-sided sign-flip, see :func:`sign_flip_p`) and ``better``:
        ``"a"`` or ``"b"`` when the Wilcoxon p-value is below ``alpha``, else ``"neither"``.
    """
    x, y = _values(a, "a"), _values(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"a and b must score the same images; got {x.size} and {y.size} values.")
    diff = x - y
    low, high = bootstrap_ci(diff, n=n, level=level, seed=seed)
    p_wilcoxon = _wilcoxon_p(diff)
    mean_diff = float(diff.mean())
    better = "neither"
    if p_wilcoxon < alpha and mean_diff != 0:
        better = "a" if mean_diff > 0 else "b"
    return {
        "n": int(diff.size),
        "mean_a": float(x.mean()),
        "mean_b": float(y.mean()),
        "mean_diff": mean_diff,
        "ci_low": low,
        "ci_high": high,
        "wilcoxon_p": p_wilcoxon,
        "permutation_p": sign_flip_p(diff, n=n, seed=seed),
        "better": better,
    }
