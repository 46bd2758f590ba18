"""Binary confusion counts and the scores derived from them, on hand-computed cases."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from celltune.evaluation import metrics
from celltune.evaluation.metrics import (
    EMPTY_RULE,
    Counts,
    confusion,
    confusion_batch,
    dice,
    iou,
    mean_dice,
    mean_iou,
    pooled_dice,
    pooled_iou,
    precision,
    recall,
)


def test_hand_computed_counts_and_scores():
    pred = np.array([[1, 1, 0], [0, 0, 0]])
    gt = np.array([[1, 0, 0], [1, 0, 0]])
    c = confusion(pred, gt)
    assert c == Counts(tp=1, fp=1, fn=1, tn=3)
    assert isinstance(c.tp, int)
    assert dice(c) == pytest.approx(2 / 4)
    assert iou(c) == pytest.approx(1 / 3)
    assert precision(c) == pytest.approx(1 / 2)
    assert recall(c) == pytest.approx(1 / 2)


def test_asymmetric_case_precision_and_recall_differ():
    # gt: the 4 pixels of row 0; pred: 3 of them plus one pixel outside.
    gt = np.zeros((4, 4), bool)
    gt[0, :4] = True
    pred = np.zeros((4, 4), bool)
    pred[0, :3] = True
    pred[1, 0] = True  # tp 3, fp 1, fn 1, tn 11
    c = confusion(pred, gt)
    assert c == Counts(3, 1, 1, 11)
    assert dice(c) == pytest.approx(6 / 8)
    assert iou(c) == pytest.approx(3 / 5)
    pred[1, 1] = True  # fp 2
    c = confusion(pred, gt)
    assert precision(c) == pytest.approx(3 / 5)
    assert recall(c) == pytest.approx(3 / 4)


def test_both_empty_scores_one():
    empty = np.zeros((5, 5), dtype=bool)
    c = confusion(empty, empty)
    assert c == Counts(0, 0, 0, 25)
    for score in (dice, iou, precision, recall):
        assert score(c) == 1.0


@pytest.mark.parametrize("pred_empty", [True, False])
def test_exactly_one_empty_scores_zero(pred_empty):
    full = np.zeros((5, 5), dtype=np.uint8)
    full[1:3, 1:3] = 1
    empty = np.zeros((5, 5), dtype=np.uint8)
    pred, gt = (empty, full) if pred_empty else (full, empty)
    c = confusion(pred, gt)
    for score in (dice, iou, precision, recall):
        assert score(c) == 0.0


def test_empty_rule_is_one_printable_sentence():
    assert isinstance(EMPTY_RULE, str)
    assert EMPTY_RULE.count(".") == 3  # "1.0", "0.0" and the final full stop
    assert EMPTY_RULE.endswith(".")
    assert "1.0" in EMPTY_RULE and "0.0" in EMPTY_RULE


def test_shape_mismatch_and_non_binary_values_raise():
    with pytest.raises(ValueError, match="shape"):
        confusion(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="0 and 1"):
        confusion(np.array([0.2, 0.9]), np.array([0, 1]))
    with pytest.raises(ValueError, match="0 and 1"):
        confusion(np.array([0, 1]), np.array([0, 2]))


def test_array_scores_per_image_mean_versus_pooled():
    # Image A: perfect (tp 1). Image B: tp 0, fp 3, fn 1. Image C: both empty.
    counts = np.array([[1, 0, 0, 9], [0, 3, 1, 6], [0, 0, 0, 10]])
    np.testing.assert_allclose(dice(counts), [1.0, 0.0, 1.0])
    np.testing.assert_allclose(iou(counts), [1.0, 0.0, 1.0])
    assert mean_dice(counts) == pytest.approx(2 / 3)
    assert mean_iou(counts) == pytest.approx(2 / 3)
    assert pooled_dice(counts) == pytest.approx(2 / (2 + 3 + 1))
    assert pooled_iou(counts) == pytest.approx(1 / (1 + 3 + 1))
    # A list of Counts is accepted as well.
    assert pooled_dice([Counts(*row) for row in counts]) == pytest.approx(1 / 3)


def test_scores_broadcast_over_leading_axes():
    counts = np.array([[[2, 0, 2, 0], [0, 0, 0, 4]], [[0, 1, 0, 3], [1, 1, 0, 2]]])
    np.testing.assert_allclose(dice(counts), [[4 / 6, 1.0], [0.0, 2 / 3]])
    with pytest.raises(ValueError, match="last axis"):
        dice(np.zeros((3, 3)))


def test_confusion_batch_matches_per_image_counts():
    rng = np.random.default_rng(1)
    pred = rng.random((5, 7, 9)) > 0.5
    gt = rng.random((5, 7, 9)) > 0.6
    batch = confusion_batch(pred, gt)
    assert batch.shape == (5, 4)
    for row, p, g in zip(batch, pred, gt, strict=True):
        assert tuple(row) == tuple(confusion(p, g))


def test_module_examples_run():
    assert doctest.testmod(metrics).failed == 0
