"""Threshold sweep from cached histograms: exactness, choice rules, persistence."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from celltune.errors import RunError
from celltune.evaluation import threshold
from celltune.evaluation.metrics import confusion, dice
from celltune.evaluation.threshold import ThresholdAccumulator, ThresholdResult, _pick, sweep


def _random_images(seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    probs, masks = [], []
    for i, shape in enumerate([(17, 23), (8, 8), (31, 5), (12, 12)]):
        mask = rng.random(shape) < (0.0 if i == 3 else 0.4)  # the last image has no foreground
        prob = np.clip(0.35 * mask + rng.random(shape) * 0.65, 0, 1)
        # Values exactly on, and one ulp below, grid thresholds test the >= convention.
        flat = prob.reshape(-1)
        flat[:4] = [0.5, 0.05, np.nextafter(0.5, 0.0), np.nextafter(0.3, 0.0)]
        flat[4:6] = [0.0, 1.0]
        probs.append(prob.astype(np.float32) if i % 2 else prob)
        masks.append(mask)
    return probs, masks


@pytest.mark.parametrize("seed", range(3))
def test_counts_equal_brute_force_confusion(seed):
    probs, masks = _random_images(seed)
    result = sweep(probs, masks)
    acc = ThresholdAccumulator()
    for p, m in zip(probs, masks, strict=True):
        acc.add(p, m)
    counts = acc.counts(result.thresholds)
    brute_dice = []
    for j, t in enumerate(result.thresholds):
        per_image = []
        for i, (p, m) in enumerate(zip(probs, masks, strict=True)):
            c = confusion(p.astype(np.float64) >= t, m)
            assert tuple(counts[i, j]) == tuple(c), (i, t)
            per_image.append(dice(c))
        brute_dice.append(np.mean(per_image))
    np.testing.assert_allclose(result.dice, brute_dice, rtol=0, atol=1e-9)
    assert result.best_dice == pytest.approx(max(brute_dice), abs=1e-9)


def test_counts_are_exact_at_every_grid_threshold():
    # Probabilities exactly on each grid value and one ulp below it: p * bins rounds across
    # the integer for some of them (e.g. 0.0585, 0.5005), which the binning must correct.
    bins = 2000
    grid = np.arange(bins + 1) / bins
    prob = np.concatenate([grid, np.nextafter(grid, 0.0)[1:]])
    mask = np.random.default_rng(0).random(prob.size) < 0.5
    acc = ThresholdAccumulator(bins)
    acc.add(prob, mask)
    counts = acc.counts(grid)[0]
    pred = prob[None, :] >= grid[:, None]
    np.testing.assert_array_equal(counts[:, 0], (pred & mask).sum(axis=1))
    np.testing.assert_array_equal(counts[:, 1], (pred & ~mask).sum(axis=1))
    np.testing.assert_array_equal(counts[:, 2], (~pred & mask).sum(axis=1))


def test_grid_and_refinement_layout():
    probs, masks = _random_images(0)
    coarse = sweep(probs, masks, refine=False)
    assert len(coarse.thresholds) == 19
    assert coarse.thresholds[0] == 0.05 and coarse.thresholds[-1] == 0.95
    assert coarse.thresholds[6] == 0.35  # grid values are the exact decimals
    fine = sweep(probs, masks)
    assert set(coarse.thresholds) <= set(fine.thresholds)
    extra = sorted(set(fine.thresholds) - set(coarse.thresholds))
    assert len(extra) == 8  # best +- 0.05 at 0.01, minus the three coarse points
    assert all(abs(t - coarse.best_threshold) <= 0.05 + 1e-12 for t in extra)
    assert list(fine.thresholds) == sorted(fine.thresholds)
    assert fine.best_dice >= coarse.best_dice


def test_picks_the_obvious_threshold():
    rng = np.random.default_rng(0)
    mask = rng.random((40, 40)) < 0.3
    prob = np.where(mask, rng.uniform(0.3, 1.0, mask.shape), rng.uniform(0.0, 0.29, mask.shape))
    prob[mask.nonzero()[0][0], mask.nonzero()[1][0]] = 0.3  # the weakest cell pixel: exactly 0.3
    result = sweep([prob], [mask])
    assert result.best_threshold == 0.3 and result.best_dice == 1.0
    assert result.dice[result.thresholds.index(0.35)] < 1.0


def test_refinement_finds_a_threshold_between_grid_points():
    rng = np.random.default_rng(1)
    mask = rng.random((40, 40)) < 0.3
    prob = np.where(mask, rng.uniform(0.32, 0.4, mask.shape), rng.uniform(0.27, 0.315, mask.shape))
    coarse = sweep([prob], [mask], refine=False)
    fine = sweep([prob], [mask])
    assert coarse.best_dice < 1.0
    assert fine.best_threshold == 0.32 and fine.best_dice == 1.0


@pytest.mark.parametrize(("fg_low", "bg_high", "expected"), [(0.85, 0.15, 0.5), (0.9, 0.6, 0.6)])
def test_ties_go_to_the_threshold_nearest_one_half(fg_low, bg_high, expected):
    rng = np.random.default_rng(2)
    mask = rng.random((30, 30)) < 0.5
    prob = np.where(mask, rng.uniform(fg_low, 1.0, mask.shape), rng.uniform(0, bg_high, mask.shape))
    result = sweep([prob], [mask])
    assert result.best_dice == 1.0 and result.best_threshold == pytest.approx(expected)
    assert _pick({900: 0.8, 1100: 0.8, 100: 0.7}, 2000) == 900  # equidistant: the lower one


def test_empty_ground_truth_follows_the_empty_rule():
    prob = np.full((5, 5), 0.4)
    result = sweep([prob], [np.zeros((5, 5), bool)], refine=False)
    curve = dict(zip(result.thresholds, result.dice, strict=True))
    assert curve[0.35] == 0.0 and curve[0.4] == 0.0 and curve[0.45] == 1.0


def test_incremental_accumulator_equals_sweep():
    probs, masks = _random_images(4)
    acc = ThresholdAccumulator(bins=1000)
    for p, m in zip(probs, masks, strict=True):
        acc.add(p, m)
    assert len(acc) == 4
    assert acc.result() == sweep(iter(probs), iter(masks), bins=1000)


def test_json_round_trip_and_files(tmp_path):
    probs, masks = _random_images(5)
    result = sweep(probs, masks)
    assert ThresholdResult.from_json(result.to_json()) == result
    path = result.save(tmp_path / "run" / "threshold.json")
    assert ThresholdResult.load(path) == result
    assert '"best_threshold"' in path.read_text()
    with pytest.raises(RunError, match="not found"):
        ThresholdResult.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(RunError, match=r"bad\.json"):
        ThresholdResult.load(tmp_path / "bad.json")


def test_bad_inputs_raise():
    acc = ThresholdAccumulator()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        acc.add(np.array([0.5, 1.5]), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        acc.add(np.array([0.5, np.nan]), np.array([0, 1]))
    with pytest.raises(ValueError, match="shape"):
        acc.add(np.zeros((2, 2)), np.zeros((2, 3)))
    # Rounding overshoot from tile blending is tolerated and binned at the ends.
    acc.add(np.array([1 + 1e-7, -1e-7], dtype=np.float32), np.array([1, 0]))
    assert acc.counts([1.0, 0.0]).tolist() == [[[1, 0, 0, 1], [1, 1, 0, 0]]]
    with pytest.raises(ValueError, match="no images"):
        ThresholdAccumulator().result()
    with pytest.raises(ValueError):
        sweep([np.zeros((2, 2))], [])
    with pytest.raises(ValueError, match="finer"):
        sweep([np.zeros((2, 2))], [np.zeros((2, 2))], step=0.0001)


def test_module_examples_run():
    assert doctest.testmod(threshold).failed == 0
