"""Segmentation metrics as pure numpy functions.

Binary metrics work in two stages, as in segmentation_models.pytorch: :func:`confusion` counts
tp/fp/fn/tn once per image, and every score (:func:`dice`, :func:`iou`, :func:`precision`,
:func:`recall`) is a tiny function of those counts. Scores accept one :class:`Counts` (giving a
float) or an array of counts with last axis ``(tp, fp, fn, tn)`` (giving an array), so a
per-image mean is ``dice(arr).mean()`` and the pooled (micro) score is :func:`pooled_dice`.

Instance metrics implement the NeurIPS 2022 Cell Segmentation challenge's F1
(:func:`instance_f1`, :func:`instance_scores`); see :func:`instance_scores` for the exact rules.

Example:
    >>> import numpy as np
    >>> c = confusion(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0]))
    >>> c
    Counts(tp=1, fp=1, fn=1, tn=1)
    >>> dice(c), iou(c)
    (0.5, 0.3333333333333333)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple, overload

import numpy as np
from scipy.optimize import linear_sum_assignment

EMPTY_RULE = (
    "When prediction and ground truth are both empty a score is 1.0, "
    "and when exactly one of them is empty it is 0.0."
)

#: IoU thresholds of the challenge-style summary: 0.5, 0.55, ..., 0.9 (nine values).
CHALLENGE_IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(9))
#: Instances with any pixel this close to the image (or patch) edge are ignored.
BORDER_WIDTH = 2
#: Images with at least this many pixels are scored in patches, as the challenge did.
LARGE_IMAGE_PIXELS = 25_000_000
PATCH_SIZE = 2000


class Counts(NamedTuple):
    """Pixel confusion counts of one binary prediction against its ground truth."""

    tp: int
    fp: int
    fn: int
    tn: int


CountsLike = Counts | Sequence[Counts] | np.ndarray


def _as_bool(mask: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.dtype == bool:
        return arr
    if np.any((arr != 0) & (arr != 1)):
        raise ValueError(
            f"{name} must be boolean or contain only 0 and 1; threshold probabilities and "
            "binarise label maps first."
        )
    return arr.astype(bool)


def confusion(pred: np.ndarray, gt: np.ndarray) -> Counts:
    """Count tp, fp, fn, tn of a binary prediction against a binary ground truth.

    Args:
        pred: Predicted mask, bool or 0/1, any shape.
        gt: Ground-truth mask of the same shape.

    Raises:
        ValueError: If the shapes differ or a mask holds values other than 0/1.
    """
    pred_b, gt_b = _as_bool(pred, "pred"), _as_bool(gt, "gt")
    if pred_b.shape != gt_b.shape:
        raise ValueError(f"pred shape {pred_b.shape} differs from gt shape {gt_b.shape}.")
    tp = int(np.count_nonzero(pred_b & gt_b))
    fp = int(np.count_nonzero(pred_b)) - tp
    fn = int(np.count_nonzero(gt_b)) - tp
    return Counts(tp, fp, fn, int(pred_b.size) - tp - fp - fn)


def confusion_batch(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Confusion counts per item of a batch ``(N, ...)``, as an int64 array ``(N, 4)``."""
    pred_b, gt_b = _as_bool(pred, "pred"), _as_bool(gt, "gt")
    if pred_b.shape != gt_b.shape or pred_b.ndim < 1:
        raise ValueError(f"pred shape {pred_b.shape} differs from gt shape {gt_b.shape}.")
    p = pred_b.reshape(len(pred_b), -1)
    g = gt_b.reshape(len(gt_b), -1)
    tp = np.count_nonzero(p & g, axis=1)
    fp = np.count_nonzero(p, axis=1) - tp
    fn = np.count_nonzero(g, axis=1) - tp
    tn = p.shape[1] - tp - fp - fn
    return np.stack([tp, fp, fn, tn], axis=1).astype(np.int64)


def _counts_array(counts: CountsLike) -> np.ndarray:
    arr = np.asarray(counts, dtype=np.int64)
    if arr.ndim == 0 or arr.shape[-1] != 4:
        raise ValueError(f"counts must have a last axis of 4 (tp, fp, fn, tn), got {arr.shape}.")
    return arr


def _ratio(num: np.ndarray, den: np.ndarray, nothing: np.ndarray) -> float | np.ndarray:
    """``num / den``, with the empty-mask rule where ``den`` is 0 (``nothing``: both empty)."""
    safe = np.where(den > 0, den, 1)
    out = np.where(den > 0, num / safe, np.where(nothing, 1.0, 0.0)).astype(np.float64)
    return float(out) if out.ndim == 0 else out


def _score(counts: CountsLike, kind: str) -> float | np.ndarray:
    arr = _counts_array(counts)
    tp, fp, fn = arr[..., 0], arr[..., 1], arr[..., 2]
    nothing = (tp + fp + fn) == 0
    num, den = {
        "dice": (2 * tp, 2 * tp + fp + fn),
        "iou": (tp, tp + fp + fn),
        "precision": (tp, tp + fp),
        "recall": (tp, tp + fn),
    }[kind]
    return _ratio(num, den, nothing)


@overload
def dice(counts: Counts) -> float: ...
@overload
def dice(counts: Sequence[Counts] | np.ndarray) -> float | np.ndarray: ...
def dice(counts: CountsLike) -> float | np.ndarray:
    """Dice (F1) score ``2tp / (2tp + fp + fn)``, with :data:`EMPTY_RULE`."""
    return _score(counts, "dice")


@overload
def iou(counts: Counts) -> float: ...
@overload
def iou(counts: Sequence[Counts] | np.ndarray) -> float | np.ndarray: ...
def iou(counts: CountsLike) -> float | np.ndarray:
    """Intersection over union ``tp / (tp + fp + fn)``, with :data:`EMPTY_RULE`."""
    return _score(counts, "iou")


@overload
def precision(counts: Counts) -> float: ...
@overload
def precision(counts: Sequence[Counts] | np.ndarray) -> float | np.ndarray: ...
def precision(counts: CountsLike) -> float | np.ndarray:
    """Precision ``tp / (tp + fp)``, with :data:`EMPTY_RULE`."""
    return _score(counts, "precision")


@overload
def recall(counts: Counts) -> float: ...
@overload
def recall(counts: Sequence[Counts] | np.ndarray) -> float | np.ndarray: ...
def recall(counts: CountsLike) -> float | np.ndarray:
    """Recall (sensitivity) ``tp / (tp + fn)``, with :data:`EMPTY_RULE`."""
    return _score(counts, "recall")


def mean_dice(counts: Sequence[Counts] | np.ndarray) -> float:
    """Mean of per-image Dice scores (each image weighs the same)."""
    return float(np.mean(dice(_counts_array(counts).reshape(-1, 4))))


def mean_iou(counts: Sequence[Counts] | np.ndarray) -> float:
    """Mean of per-image IoU scores (each image weighs the same)."""
    return float(np.mean(iou(_counts_array(counts).reshape(-1, 4))))


def pooled_dice(counts: Sequence[Counts] | np.ndarray) -> float:
    """Micro Dice: counts summed over all images first (each pixel weighs the same)."""
    return float(dice(_counts_array(counts).reshape(-1, 4).sum(axis=0)))


def pooled_iou(counts: Sequence[Counts] | np.ndarray) -> float:
    """Micro IoU: counts summed over all images first (each pixel weighs the same)."""
    return float(iou(_counts_array(counts).reshape(-1, 4).sum(axis=0)))


# --- instance metrics (NeurIPS 2022 CellSeg challenge) ---------------------------------------


def _check_labels(labels: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D label map, got shape {arr.shape}.")
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integer instance ids, got dtype {arr.dtype}.")
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} holds negative ids; instance ids must be >= 0.")
    return arr


def _relabel(labels: np.ndarray, drop: np.ndarray) -> tuple[np.ndarray, int]:
    """Map ids to 1..n in increasing order, sending 0 and every id in ``drop`` to 0."""
    flat = labels.ravel()
    top = int(flat.max()) if flat.size else 0
    if top < 2**22:  # a lookup table is faster than sorting the whole image
        present = np.bincount(flat, minlength=top + 1) > 0
        present[0] = False
        present[drop] = False
        lut = np.zeros(top + 1, dtype=np.int32)
        lut[present] = np.arange(1, int(present.sum()) + 1)
        return lut[labels], int(present.sum())
    ids, inverse = np.unique(flat, return_inverse=True)
    keep = (ids != 0) & ~np.isin(ids, drop)
    lut = np.zeros(ids.size, dtype=np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1)
    return lut[inverse].reshape(labels.shape), int(keep.sum())


def remove_border_instances(labels: np.ndarray, width: int = BORDER_WIDTH) -> np.ndarray:
    """Drop every instance with a pixel within ``width`` pixels of the edge; relabel 1..n.

    Args:
        labels: 2-D instance map, 0 = background.
        width: Border width in pixels (the challenge uses 2: the two outermost rows and columns).

    Returns:
        An int32 label map with consecutive ids 1..n in the order of the original ids.
    """
    arr = _check_labels(labels, "labels")
    if width <= 0:
        return _relabel(arr, np.zeros(0, dtype=np.int64))[0]
    strips = [arr[:width], arr[-width:], arr[:, :width], arr[:, -width:]]
    drop = np.unique(np.concatenate([s.ravel() for s in strips]))
    return _relabel(arr, drop.astype(np.int64))[0]


def _pair_iou(gt: np.ndarray, pred: np.ndarray, n_pred: int) -> tuple[np.ndarray, ...]:
    """Sparse IoU of every overlapping (gt, pred) pair: zero-based ids and IoU values.

    Builds the contingency table from the overlapping pixels only (``np.unique`` on paired ids),
    so the cost is one pass over the image however many cells there are.
    """
    both = (gt > 0) & (pred > 0)
    key = (gt[both].astype(np.int64) - 1) * n_pred + (pred[both] - 1)
    pairs, inter = np.unique(key, return_counts=True)
    gi, pi = pairs // n_pred, pairs % n_pred
    area_gt = np.bincount(gt.ravel())[1:]
    area_pred = np.bincount(pred.ravel())[1:]
    return gi, pi, inter / (area_gt[gi] + area_pred[pi] - inter)


def _matches(gi: np.ndarray, pi: np.ndarray, pair_iou: np.ndarray, threshold: float) -> int:
    """Largest number of one-to-one (gt, pred) pairs with IoU >= ``threshold``.

    Pairs whose gt and pred each have no other candidate are matched directly; the rest go to
    Hungarian assignment (maximise the number of matches, IoU as tie-break, as the challenge).
    At thresholds above 0.5 a cell can have only one candidate, so that rest is usually empty.
    """
    keep = pair_iou >= threshold
    g, p, v = gi[keep], pi[keep], pair_iou[keep]
    if g.size == 0:
        return 0
    _, g_idx, g_cnt = np.unique(g, return_inverse=True, return_counts=True)
    _, p_idx, p_cnt = np.unique(p, return_inverse=True, return_counts=True)
    alone = (g_cnt[g_idx] == 1) & (p_cnt[p_idx] == 1)
    n_alone = int(alone.sum())
    if n_alone == g.size:
        return n_alone
    rows, r_idx = np.unique(g[~alone], return_inverse=True)
    cols, c_idx = np.unique(p[~alone], return_inverse=True)
    cost = np.zeros((rows.size, cols.size))
    cost[r_idx, c_idx] = -1.0 - v[~alone] / (2 * max(rows.size, cols.size))
    r, c = linear_sum_assignment(cost)
    return n_alone + int(np.count_nonzero(cost[r, c] < 0))


def _regions(
    gt: np.ndarray, pred: np.ndarray, patch: int, large: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The whole image, or for large images its ``patch``-sized tiles zero-padded at the end."""
    if gt.size < large:
        yield gt, pred
        return
    height, width = gt.shape
    for y in range(0, height, patch):
        for x in range(0, width, patch):
            g, p = gt[y : y + patch, x : x + patch], pred[y : y + patch, x : x + patch]
            pad = ((0, patch - g.shape[0]), (0, patch - g.shape[1]))
            yield np.pad(g, pad), np.pad(p, pad)


def instance_scores(
    gt_labels: np.ndarray,
    pred_labels: np.ndarray,
    iou_thresholds: Sequence[float] = CHALLENGE_IOU_THRESHOLDS,
    *,
    border: int = BORDER_WIDTH,
    patch_size: int = PATCH_SIZE,
    large_image_pixels: int = LARGE_IMAGE_PIXELS,
) -> dict[str, Any]:
    """Instance detection scores of the NeurIPS 2022 CellSeg challenge at several IoU thresholds.

    Rules, following the challenge's evaluation script:

    1. Instances with any pixel within ``border`` (2) pixels of the image edge are removed from
       both maps, which are then relabelled 1..n.
    2. A predicted and a true cell match when their IoU >= the threshold; matching is
       one-to-one, maximising the number of matches (Hungarian assignment).
       tp = matches, fp = predicted cells - tp, fn = true cells - tp.
    3. Images with at least ``large_image_pixels`` (25 M) pixels are cut into
       ``patch_size`` (2000) square tiles from the top-left; the last row and column of tiles
       are zero-padded to full size. Each tile is scored by rules 1-2 on its own (so cells
       cut by a tile edge are dropped, and the image's right and bottom edges, lying inside
       the padding of a partial tile, do not trigger rule 1), and tp/fp/fn are summed.
    4. precision = tp/(tp+fp), recall = tp/(tp+fn), F1 = 2tp/(2tp+fp+fn), with
       :data:`EMPTY_RULE` (no cells in either map scores 1.0; the challenge script gave 0).

    Args:
        gt_labels: 2-D ground-truth instance map, 0 = background.
        pred_labels: 2-D predicted instance map of the same shape.
        iou_thresholds: IoU thresholds; the default is 0.5, 0.55, ..., 0.9.
        border: Border width for rule 1 (0 keeps every cell).
        patch_size: Tile size for rule 3.
        large_image_pixels: Pixel count from which rule 3 applies.

    Returns:
        ``iou_thresholds``, ``tp``, ``fp``, ``fn``, ``precision``, ``recall``, ``f1`` (lists, one
        entry per threshold), ``mean_f1`` (mean F1 over the thresholds given), ``n_gt`` and
        ``n_pred`` (cells counted after rule 1).
    """
    gt = _check_labels(gt_labels, "gt_labels")
    pred = _check_labels(pred_labels, "pred_labels")
    if gt.shape != pred.shape:
        raise ValueError(f"gt_labels shape {gt.shape} differs from pred_labels shape {pred.shape}.")
    thresholds = [float(t) for t in iou_thresholds]
    if not thresholds:
        raise ValueError("iou_thresholds must hold at least one threshold.")
    tp, n_gt, n_pred = np.zeros(len(thresholds), dtype=np.int64), 0, 0
    for g_region, p_region in _regions(gt, pred, patch_size, large_image_pixels):
        g = remove_border_instances(g_region, border)
        p = remove_border_instances(p_region, border)
        ng, npred = int(g.max(initial=0)), int(p.max(initial=0))
        n_gt, n_pred = n_gt + ng, n_pred + npred
        if ng and npred:
            gi, pi, pair_iou = _pair_iou(g, p, npred)
            tp += [_matches(gi, pi, pair_iou, t) for t in thresholds]
    counts = np.stack([tp, n_pred - tp, n_gt - tp, np.zeros_like(tp)], axis=1)
    f1 = dice(counts)
    return {
        "iou_thresholds": thresholds,
        "tp": tp.tolist(),
        "fp": (n_pred - tp).tolist(),
        "fn": (n_gt - tp).tolist(),
        "precision": np.asarray(precision(counts)).tolist(),
        "recall": np.asarray(recall(counts)).tolist(),
        "f1": np.asarray(f1).tolist(),
        "mean_f1": float(np.mean(f1)),
        "n_gt": n_gt,
        "n_pred": n_pred,
    }


def instance_f1(
    gt_labels: np.ndarray, pred_labels: np.ndarray, iou_threshold: float = 0.5
) -> float:
    """The NeurIPS 2022 CellSeg challenge F1 at one IoU threshold (rules: :func:`instance_scores`).

    Example:
        >>> gt = np.zeros((10, 10), dtype=int); gt[3:6, 3:6] = 1
        >>> instance_f1(gt, gt)
        1.0
    """
    return float(instance_scores(gt_labels, pred_labels, (iou_threshold,))["f1"][0])
