"""Mask comparison grid: test images, their ground truth, and every model's errors side by side.

Rows are test images, columns are the image, the ground truth, then one panel per model where
each pixel is coloured by its outcome (:data:`ERROR_COLORS`): true positive white, false
positive magenta, false negative cyan, true negative black. Images are chosen deterministically
by :func:`choose_grid_images` (hardest first, then median, then easiest).

Example:
    >>> import numpy as np
    >>> overlay_errors(np.array([[1, 1], [0, 0]]), np.array([[1, 0], [1, 0]]))[0, 1].tolist()
    [255, 0, 255]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image

from celltune.evaluation.metrics import confusion, dice

#: RGB colour of each pixel outcome in a prediction panel.
ERROR_COLORS: dict[str, tuple[int, int, int]] = {
    "TP": (255, 255, 255),
    "FP": (255, 0, 255),
    "FN": (0, 255, 255),
    "TN": (0, 0, 0),
}
_LEGEND = {
    "TP": "true positive",
    "FP": "false positive (predicted, not in truth)",
    "FN": "false negative (missed)",
    "TN": "true negative",
}
#: Panels are shrunk so that their longer side is at most this many pixels.
DISPLAY_MAX_SIDE = 384


@dataclass
class GridRow:
    """One test image with its ground truth and each model's predicted mask.

    Attributes:
        name: Image name (shown as the row label).
        image: ``(H, W)`` or ``(H, W, C)`` image scaled to ``[0, 1]``.
        truth: ``(H, W)`` binary ground truth.
        preds: model -> ``(H, W)`` binary prediction.
        dice: model -> per-image Dice shown in the panel title; computed when absent.
    """

    name: str
    image: np.ndarray
    truth: np.ndarray
    preds: dict[str, np.ndarray]
    dice: dict[str, float] = field(default_factory=dict)


def overlay_errors(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Colour each pixel by outcome: ``(H, W, 3)`` uint8 using :data:`ERROR_COLORS`.

    Args:
        pred: Binary prediction (bool or 0/non-zero).
        truth: Binary ground truth of the same shape.
    """
    p, t = np.asarray(pred) != 0, np.asarray(truth) != 0
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} differs from ground truth {t.shape}.")
    out = np.zeros((*p.shape, 3), dtype=np.uint8)
    out[p & t] = ERROR_COLORS["TP"]
    out[p & ~t] = ERROR_COLORS["FP"]
    out[~p & t] = ERROR_COLORS["FN"]
    return out


def choose_grid_images(
    per_image: Mapping[str, Sequence[Mapping[str, Any]]], n: int = 4
) -> list[str]:
    """Pick ``n`` test images for the grid: the hardest, then median ones, then the easiest.

    Only images scored by every model are candidates. Images are ranked by their mean Dice
    across models (ties broken by name). About a quarter of ``n`` are the easiest and a
    quarter those nearest the median (at least one of each for ``n >= 3``; ``n = 2`` gives the
    hardest and the median image); the rest are the hardest.

    Args:
        per_image: model -> rows of its ``per_image.csv`` (each with ``name`` and ``dice``).
        n: Number of images wanted.

    Returns:
        Image names ordered from lowest to highest mean Dice.
    """
    if n < 1 or not per_image:
        return []
    scores: dict[str, list[float]] = {}
    for rows in per_image.values():
        for row in rows:
            scores.setdefault(str(row["name"]), []).append(float(row["dice"]))
    common = [name for name, vals in scores.items() if len(vals) == len(per_image)]
    order = sorted(common, key=lambda name: (float(np.mean(scores[name])), name))
    if len(order) <= n:
        return order
    n_easy = max(1, n // 4) if n >= 3 else 0
    n_median = max(1, n // 4) if n >= 2 else 0
    n_hard = n - n_easy - n_median
    chosen = set(range(n_hard)) | set(range(len(order) - n_easy, len(order)))
    centre = (len(order) - 1) / 2
    middle = [i for i in range(len(order)) if i not in chosen]
    chosen |= set(sorted(middle, key=lambda i: (abs(i - centre), i))[:n_median])
    return [order[i] for i in sorted(chosen)]


def _to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 3 and img.shape[-1] != 3:
        img = img.mean(axis=-1)  # two-channel images are shown as their mean
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    return (np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def shrink(rgb: np.ndarray, max_side: int = DISPLAY_MAX_SIDE) -> np.ndarray:
    """Downsample an ``(H, W, 3)`` uint8 panel (area average) so its longer side fits."""
    h, w = rgb.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return rgb
    # Area averaging keeps small error regions visible as tinted pixels instead of dropping them.
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BOX))


def _panel(ax: Any, rgb: np.ndarray, title: str) -> None:
    ax.imshow(rgb, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def mask_grid(
    rows: Sequence[GridRow], models: Sequence[str], max_side: int = DISPLAY_MAX_SIDE
) -> Figure:
    """Build the comparison grid (one row per image, columns image, truth, each model).

    Args:
        rows: Images with their ground truth and predictions (see :class:`GridRow`).
        models: Models to show, in column order; each must be in every row's ``preds``.
        max_side: Panels are downsampled so their longer side is at most this.

    Returns:
        The Figure, with a colour legend for TP/FP/FN/TN.
    """
    ncols = 2 + len(models)
    fig = Figure(figsize=(2.2 * ncols, 2.3 * max(len(rows), 1) + 0.6), layout="constrained")
    if not rows:
        fig.text(0.5, 0.5, "no test images to show", ha="center", va="center")
        return fig
    axes = np.atleast_2d(fig.subplots(len(rows), ncols, squeeze=False))
    for r, row in enumerate(rows):
        truth = np.asarray(row.truth) != 0
        _panel(axes[r, 0], shrink(_to_uint8_rgb(row.image), max_side), row.name)
        _panel(axes[r, 1], shrink(overlay_errors(truth, truth), max_side), "ground truth")
        for c, model in enumerate(models, start=2):
            pred = row.preds[model]
            score = row.dice.get(model)
            if score is None:
                score = dice(confusion(np.asarray(pred) != 0, truth))
            panel = shrink(overlay_errors(pred, truth), max_side)
            _panel(axes[r, c], panel, f"{model}\nDice {score:.3f}")
    handles = [
        Patch(facecolor=np.array(color) / 255, edgecolor="0.4", label=f"{key}: {_LEGEND[key]}")
        for key, color in ERROR_COLORS.items()
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    return fig
