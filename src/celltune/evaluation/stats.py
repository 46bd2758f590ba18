"""Uncertainty of per-image scores: bootstrap confidence intervals and paired model comparison.

A paired comparison calls one model better only when two kinds of evidence agree: the
bootstrap interval of the mean difference excludes 0, and the Wilcoxon signed-rank test (its
p-value Holm-adjusted when several comparisons are made together) is below ``alpha`` with its
rank direction on the same side. A mean pulled one way by a single outlier while the ranks
point the other way is "neither".

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


def rank_direction(diff: Sequence[float] | np.ndarray) -> int:
    """Sign of the signed-rank statistic ``W+ - W-``: 1 when the ranks favour positive differences.

    Zero differences are dropped (as in the ``"wilcox"`` zero method); tied magnitudes share
    their average rank. Returns 0 when the positive and negative rank sums are equal.
    """
    from scipy.stats import rankdata

    d = _values(diff, "diff")
    d = d[d != 0]
    if d.size == 0:
        return 0
    ranks = rankdata(np.abs(d))
    return int(np.sign(ranks[d > 0].sum() - ranks[d < 0].sum()))


def decide(ci_low: float, ci_high: float, p: float, direction: int, alpha: float = 0.05) -> str:
    """``"a"``, ``"b"`` or ``"neither"`` from an interval of ``A - B``, a p-value and a rank sign.

    ``"a"`` needs ``ci_low > 0``, ``p < alpha`` and ``direction > 0``; ``"b"`` the mirror image.
    """
    if p < alpha and ci_low > 0 and direction > 0:
        return "a"
    if p < alpha and ci_high < 0 and direction < 0:
        return "b"
    return "neither"


def holm(pvalues: Sequence[float] | np.ndarray) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given.

    The ``k``-th smallest of ``m`` p-values is multiplied by ``m - k + 1``; the running
    maximum keeps the adjusted values in the same order as the raw ones, and they are capped
    at 1. Rejecting every hypothesis whose adjusted p-value is below ``alpha`` controls the
    family-wise error rate at ``alpha``.

    Example:
        >>> [round(p, 6) for p in holm([0.01, 0.04, 0.03])]
        [0.03, 0.06, 0.06]
    """
    p = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    if p.size == 0:
        return []
    if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        raise ValueError("p-values must be finite and lie in [0, 1].")
    order = np.argsort(p, kind="stable")
    scaled = p[order] * (p.size - np.arange(p.size))
    adjusted = np.minimum(np.maximum.accumulate(scaled), 1.0)
    out = np.empty_like(adjusted)
    out[order] = adjusted
    return [float(v) for v in out]


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
        ``permutation_p`` (two-sided sign-flip, see :func:`sign_flip_p`), ``rank_direction``
        (see :func:`rank_direction`) and ``better``: ``"a"`` or ``"b"`` only when the interval
        excludes 0, the Wilcoxon p-value is below ``alpha`` and the rank direction agrees with
        the interval (see :func:`decide`), else ``"neither"``.
    """
    x, y = _values(a, "a"), _values(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"a and b must score the same images; got {x.size} and {y.size} values.")
    diff = x - y
    low, high = bootstrap_ci(diff, n=n, level=level, seed=seed)
    p_wilcoxon = _wilcoxon_p(diff)
    direction = rank_direction(diff)
    return {
        "n": int(diff.size),
        "mean_a": float(x.mean()),
        "mean_b": float(y.mean()),
        "mean_diff": float(diff.mean()),
        "ci_low": low,
        "ci_high": high,
        "wilcoxon_p": p_wilcoxon,
        "permutation_p": sign_flip_p(diff, n=n, seed=seed),
        "rank_direction": direction,
        "better": decide(low, high, p_wilcoxon, direction, alpha),
    }


def paired_tests(
    pairs: Sequence[tuple[Sequence[float] | np.ndarray, Sequence[float] | np.ndarray]],
    n: int = 9999,
    level: float = 0.95,
    seed: int = 0,
    alpha: float = 0.05,
) -> list[dict[str, Any]]:
    """:func:`paired_test` for several comparisons at once, decided with Holm-adjusted p-values.

    Each result keeps the raw ``wilcoxon_p`` and adds ``p_holm`` (adjusted over all the
    comparisons given, see :func:`holm`); ``better`` uses ``p_holm`` instead of the raw value.
    Pass every comparison a report shows (for example the best row against each other row,
    after choosing the best row) so that the correction covers all of them.
    """
    results = [paired_test(a, b, n=n, level=level, seed=seed, alpha=alpha) for a, b in pairs]
    for result, p_holm in zip(results, holm([r["wilcoxon_p"] for r in results]), strict=True):
        result["p_holm"] = p_holm
        result["better"] = decide(
            result["ci_low"], result["ci_high"], p_holm, result["rank_direction"], alpha
        )
    return results


def seed_image_interval(
    a: Sequence[Sequence[float]] | np.ndarray,
    b: Sequence[Sequence[float]] | np.ndarray,
    n: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean of ``A - B`` and a bootstrap interval over both images and training seeds.

    ``a`` is ``(seeds_a, images)``: per-image scores of recipe A trained with each seed;
    ``b`` likewise for B, on the same images in the same order. Each resample draws the
    images once (the same draw for both recipes, keeping the pairing) and, independently for
    each recipe, its seeds with replacement; the statistic is the mean over drawn seeds and
    images of A minus that of B. The interval therefore covers both which images were tested
    and how much a recipe's result moves from one training run to the next.

    Returns:
        ``(mean_diff, low, high)``.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or x.size == 0 or y.size == 0:
        raise ValueError(
            f"a and b must be (seeds, images) with the same images; got {x.shape} and {y.shape}."
        )
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("scores contain NaN or infinite values.")
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}.")
    rng = np.random.default_rng(seed)
    images = x.shape[1]
    # Per resample: how often each seed was drawn, as weights that sum to 1.
    wa = _draw_weights(rng, n, x.shape[0])
    wb = _draw_weights(rng, n, y.shape[0])
    per_image = wa @ x - wb @ y  # (n, images): seed-averaged difference per image
    idx = rng.integers(0, images, size=(n, images))
    means = np.take_along_axis(per_image, idx, axis=1).mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float((x.mean(axis=0) - y.mean(axis=0)).mean()), float(low), float(high)


def _draw_weights(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """``(n, k)`` weights: the share of ``k`` draws with replacement that picked each seed."""
    draws = rng.integers(0, k, size=(n, k))
    return (draws[:, :, None] == np.arange(k)).sum(axis=1) / k
