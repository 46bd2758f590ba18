"""The NeurIPS 2022 CellSeg instance F1: hand-worked cases and a brute-force cross-check."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from celltune.evaluation.metrics import (
    CHALLENGE_IOU_THRESHOLDS,
    instance_f1,
    instance_scores,
    remove_border_instances,
)


def _canvas(size: int = 20) -> np.ndarray:
    return np.zeros((size, size), dtype=np.int32)


def test_perfect_match_with_permuted_ids():
    gt = _canvas()
    gt[3:7, 3:7], gt[10:14, 3:9], gt[4:8, 11:16] = 1, 2, 3
    pred = np.zeros_like(gt)
    pred[gt == 1], pred[gt == 2], pred[gt == 3] = 30, 10, 20
    scores = instance_scores(gt, pred)
    assert instance_f1(gt, pred) == 1.0
    assert scores["tp"] == [3] * 9 and scores["fp"] == [0] * 9 and scores["fn"] == [0] * 9
    assert scores["mean_f1"] == 1.0


def test_shifted_cell_matches_only_below_its_iou():
    gt, pred = _canvas(), _canvas()
    gt[5:9, 5:9] = 1
    pred[5:9, 6:10] = 1  # one-pixel shift: intersection 12, union 20, IoU 0.6
    assert instance_f1(gt, pred, 0.5) == 1.0
    assert instance_f1(gt, pred, 0.6) == 1.0  # IoU >= threshold counts
    assert instance_f1(gt, pred, 0.65) == 0.0
    pred[:] = 0
    pred[5:9, 7:11] = 1  # two-pixel shift: 8 / 24 = 1/3
    assert instance_f1(gt, pred, 0.5) == 0.0


def test_split_cell_counts_one_match_and_one_false_positive():
    gt, pred = _canvas(), _canvas()
    gt[5:9, 4:14] = 1  # 40 pixels
    pred[5:9, 4:10], pred[5:9, 10:14] = 1, 2  # halves of 24 and 16 pixels: IoU 0.6 and 0.4
    s = instance_scores(gt, pred, (0.5,))
    assert (s["tp"], s["fp"], s["fn"]) == ([1], [1], [0])
    assert s["precision"] == [0.5] and s["recall"] == [1.0]
    assert s["f1"][0] == pytest.approx(2 / 3)


def test_merged_cells_count_one_match_and_one_miss():
    gt, pred = _canvas(), _canvas()
    gt[5:9, 4:8], gt[5:9, 8:12] = 1, 2
    pred[5:9, 4:12] = 7  # each gt cell has IoU exactly 16/32 = 0.5 with the merged cell
    s = instance_scores(gt, pred, (0.5, 0.55))
    assert s["tp"] == [1, 0] and s["fp"] == [0, 1] and s["fn"] == [1, 2]
    assert s["f1"] == pytest.approx([2 / 3, 0.0])
    assert s["mean_f1"] == pytest.approx(1 / 3)


def test_matching_maximises_matches_rather_than_taking_the_best_iou_first():
    gt, pred = _canvas(), _canvas()
    gt[5:9, 2:14], gt[9:11, 2:10] = 1, 2  # A (48 px) and B (16 px) below it
    pred[5:11, 2:10], pred[5:9, 10:14] = 1, 2  # P1 covers B and 2/3 of A; P2 the rest of A
    # IoU(A, P1) = 32/64 = 0.5, IoU(A, P2) = 16/48, IoU(B, P1) = 16/48: taking A-P1 first
    # leaves one match; A-P2 plus B-P1 gives two.
    s = instance_scores(gt, pred, (0.3, 0.5))
    assert s["tp"] == [2, 1]


def test_cells_within_two_pixels_of_the_border_are_ignored():
    gt, pred = _canvas(), _canvas()
    gt[1:5, 8:12] = 1  # touches row 1: removed
    gt[8:12, 16:19] = 2  # touches column 18 (= size - 2): removed
    gt[2:6, 2:6] = 3  # first row and column 2: kept
    pred[2:6, 2:6] = 1
    s = instance_scores(gt, pred, (0.5,))
    assert s["n_gt"] == 1 and s["n_pred"] == 1 and s["f1"] == [1.0]
    # A predicted cell on the border is not a false positive either.
    pred[17:20, 0:3] = 2
    assert instance_f1(gt, pred) == 1.0


def test_remove_border_instances_relabels_consecutively():
    lab = _canvas(10)
    lab[0:2, 0:2], lab[4:6, 4:6], lab[3:5, 7:9], lab[6:8, 2:4] = 9, 50, 7, 3
    out = remove_border_instances(lab)
    # 9 touches the corner and 7 reaches column 8 (= 10 - 2); 3 and 50 remain, in id order.
    assert sorted(np.unique(out).tolist()) == [0, 1, 2]
    assert np.all(out[6:8, 2:4] == 1) and np.all(out[4:6, 4:6] == 2)
    assert np.all(out[0:2, 0:2] == 0) and np.all(out[3:5, 7:9] == 0)


def test_empty_cases():
    empty, cell = _canvas(), _canvas()
    cell[5:9, 5:9] = 1
    assert instance_f1(empty, empty) == 1.0
    assert instance_f1(cell, empty) == 0.0
    assert instance_f1(empty, cell) == 0.0
    s = instance_scores(cell, empty, (0.5,))
    assert s["precision"] == [0.0] and s["recall"] == [0.0]
    border_only = _canvas()
    border_only[0:3, 0:3] = 4
    assert instance_f1(border_only, empty) == 1.0  # nothing left after the border rule


def test_default_thresholds_and_mean():
    assert CHALLENGE_IOU_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)
    gt, pred = _canvas(), _canvas()
    gt[5:9, 5:9] = 1
    pred[5:9, 6:10] = 1  # IoU 0.6: F1 1 at 0.5, 0.55, 0.6 and 0 at the six thresholds above
    s = instance_scores(gt, pred)
    assert s["f1"] == [1.0, 1.0, 1.0] + [0.0] * 6
    assert s["mean_f1"] == pytest.approx(3 / 9)


def test_large_images_are_scored_in_padded_patches():
    # With patch 10 from 100 pixels, a 25x25 image is cut into 3x3 tiles, the last ones padded.
    gt = _canvas(25)
    gt[3:7, 3:7] = 1  # inside tile (0, 0)
    gt[13:17, 8:12] = 2  # straddles the tile edge at column 10: dropped in patch mode
    gt[22:25, 22:25] = 3  # touches the image corner, which lies inside a padded tile
    pred = gt.copy()
    small = {"patch_size": 10, "large_image_pixels": 100}
    whole = instance_scores(gt, pred, (0.5,))
    patched = instance_scores(gt, pred, (0.5,), **small)
    assert whole["n_gt"] == 2  # cells 1 and 2; cell 3 touches the image border
    assert patched["n_gt"] == 2  # cells 1 and 3; cell 2 touches a tile border
    assert patched["tp"] == [2] and patched["f1"] == [1.0]
    # Counts are summed over tiles: break cell 3 only, cell 1 still matches.
    pred[22:25, 22:25] = 0
    pred[22:25, 22:23] = 3  # IoU 3/9
    patched = instance_scores(gt, pred, (0.5,), **small)
    assert (patched["tp"], patched["fp"], patched["fn"]) == ([1], [1], [1])
    # Exactly at the limit the patch rule applies (the challenge scores whole images below it).
    at_limit = instance_scores(gt, pred, (0.5,), patch_size=10, large_image_pixels=25 * 25)
    assert at_limit["n_gt"] == 2 and at_limit["tp"] == [1]


def test_large_and_sparse_ids_give_the_same_scores():
    rng = np.random.default_rng(5)
    gt, pred = _random_maps(rng, size=24, n_cells=6)
    ids = np.zeros(60, dtype=np.int64)
    ids[1:7] = [3, 70, 2**23 + 5, 2**30, 12, 99]
    ids[50:53] = [2**31 - 1, 8, 2**25]
    assert instance_scores(ids[gt], ids[pred]) == instance_scores(gt, pred)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="shape"):
        instance_f1(_canvas(5), _canvas(6))
    with pytest.raises(ValueError, match="integer"):
        instance_f1(np.zeros((5, 5)), _canvas(5))
    with pytest.raises(ValueError, match="2-D"):
        instance_f1(np.zeros((2, 5, 5), int), np.zeros((2, 5, 5), int))


# --- independent brute force ------------------------------------------------------------------


def _random_maps(rng: np.random.Generator, size: int, n_cells: int) -> tuple[np.ndarray, ...]:
    """Random rectangles as gt; pred jitters, drops, splits or adds cells."""
    gt, pred = np.zeros((size, size), np.int64), np.zeros((size, size), np.int64)
    for cell in range(1, n_cells + 1):
        y, x = rng.integers(0, size - 3, 2)
        h, w = rng.integers(2, 7, 2)
        gt[y : y + h, x : x + w] = cell
        dy, dx, dh, dw = rng.integers(-1, 2, 4)
        if rng.random() < 0.85:
            pred[max(y + dy, 0) : y + dy + h + dh, max(x + dx, 0) : x + dx + w + dw] = cell
    for extra in range(int(rng.integers(0, 3))):
        y, x = rng.integers(0, size - 3, 2)
        pred[y : y + int(rng.integers(2, 8)), x : x + int(rng.integers(2, 8))] = 50 + extra
    return gt, pred


def _random_strips(rng: np.random.Generator, size: int) -> tuple[np.ndarray, ...]:
    """Two independent cuts of one band into strips: every cell overlaps its neighbours."""

    def cut() -> np.ndarray:
        n = int(rng.integers(1, 7))
        inner = np.sort(rng.choice(np.arange(3, size - 3), n - 1, replace=False))
        edges = np.concatenate([[2], inner, [size - 2]])
        lab = np.zeros((size, size), np.int64)
        for cell, (a, b) in zip(rng.permutation(n) + 1, itertools.pairwise(edges), strict=True):
            lab[4 : size - 4, a:b] = cell
        return lab

    return cut(), cut()


def _brute_border(labels: np.ndarray, width: int) -> list[np.ndarray]:
    masks = []
    h, w = labels.shape
    for cell in np.unique(labels):
        if cell == 0:
            continue
        ys, xs = np.nonzero(labels == cell)
        near = (ys < width) | (ys >= h - width) | (xs < width) | (xs >= w - width)
        if not near.any():
            masks.append(labels == cell)
    return masks


def _brute_tp(gt: np.ndarray, pred: np.ndarray, threshold: float, width: int) -> tuple[int, ...]:
    g_masks, p_masks = _brute_border(gt, width), _brute_border(pred, width)
    k = max(len(g_masks), len(p_masks))
    table = np.zeros((k, k))
    for i, gm in enumerate(g_masks):
        for j, pm in enumerate(p_masks):
            table[i, j] = (gm & pm).sum() / (gm | pm).sum()
    best = 0
    for perm in itertools.permutations(range(k)):  # every one-to-one assignment
        best = max(best, int(sum(table[i, perm[i]] >= threshold for i in range(k))))
    return best, len(g_masks), len(p_masks)


@pytest.mark.parametrize("seed", range(60))
def test_agrees_with_exhaustive_matching(seed):
    rng = np.random.default_rng(seed)
    if seed % 2:
        gt, pred = _random_strips(rng, size=16)
    else:
        gt, pred = _random_maps(rng, size=16, n_cells=int(rng.integers(0, 6)))
    width = 2 if seed % 3 else 0
    thresholds = (0.1, 0.2, 0.3, 0.5, 0.75, 0.9)
    s = instance_scores(gt, pred, thresholds, border=width)
    for t, tp, fp, fn, f1 in zip(thresholds, s["tp"], s["fp"], s["fn"], s["f1"], strict=True):
        want_tp, n_gt, n_pred = _brute_tp(gt, pred, t, width)
        assert (tp, fp, fn) == (want_tp, n_pred - want_tp, n_gt - want_tp), t
        want_f1 = 1.0 if n_gt == n_pred == 0 else 2 * want_tp / (n_gt + n_pred)
        assert f1 == pytest.approx(want_f1)
