"""Training curves and threshold curves. Every function returns a matplotlib Figure.

Figures are built without pyplot, so nothing here touches global state or needs a display;
the caller saves them (:func:`save_figure`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from celltune.io import atomic_path


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save a Figure as PNG atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    return path


def _column(rows: Sequence[Mapping[str, float]], key: str) -> list[float]:
    return [float(r.get(key, math.nan)) for r in rows]


def loss_curves(
    runs: Mapping[str, Sequence[Mapping[str, float]]], title: str | None = None
) -> Figure:
    """Train/validation loss and validation Dice per epoch for one or more runs.

    Args:
        runs: run name -> rows of ``metrics.csv`` (epoch, train_loss, val_loss, val_dice).
        title: optional figure title.
    """
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_loss, ax_dice = fig.subplots(1, 2)
    colors = _colors(len(runs))
    for (name, rows), color in zip(runs.items(), colors, strict=True):
        epochs = [e + 1 for e in _column(rows, "epoch")]
        ax_loss.plot(epochs, _column(rows, "train_loss"), color=color, label=f"{name} train")
        ax_loss.plot(epochs, _column(rows, "val_loss"), color=color, ls="--", label=f"{name} val")
        ax_dice.plot(epochs, _column(rows, "val_dice"), color=color, marker="o", ms=3, label=name)
    # Early epochs of from-scratch models can sit an order of magnitude above the rest.
    ax_loss.set_yscale("log")
    ax_loss.set(xlabel="epoch", ylabel="loss (log scale)",
                title="Loss (solid: train, dashed: validation)")
    ax_dice.set(xlabel="epoch", ylabel="Dice at 0.5", title="Validation Dice", ylim=(0, 1))
    for ax in (ax_loss, ax_dice):
        ax.grid(alpha=0.3)
    ax_loss.legend(fontsize=7, ncol=2 if len(runs) > 3 else 1)
    if len(runs) > 1:
        ax_dice.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


def threshold_curves(curves: Mapping[str, Mapping[str, Any]], title: str | None = None) -> Figure:
    """Validation Dice versus probability threshold, one line per model, chosen point marked.

    Args:
        curves: model name -> ``threshold.json`` content (``thresholds``, ``dice``,
            ``best_threshold``, ``best_dice``).
    """
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.subplots()
    for (name, c), color in zip(curves.items(), _colors(len(curves)), strict=True):
        ax.plot(c["thresholds"], c["dice"], color=color, label=f"{name} (t={c['best_threshold']:.2f})")
        ax.plot([c["best_threshold"]], [c["best_dice"]], marker="*", ms=12, color=color)
    ax.set(xlabel="probability threshold", ylabel="mean validation Dice", xlim=(0, 1), ylim=(0, 1))
    ax.set_title(title or "Threshold sweep on validation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def postprocess_curve(sweep: Mapping[str, Any], title: str | None = None) -> Figure:
    """Validation F1 at IoU 0.5 versus the instance step's swept parameter, one line per
    size filter, the chosen point starred; candidates off the axis (plain connected
    components) are drawn as a dashed level.

    Args:
        sweep: ``postprocess.json`` content (``parameter``, ``candidates``, ``filters``,
            ``f1``, ``best``, ``best_f1``).
    """
    name = sweep["parameter"]
    on_axis = [i for i, c in enumerate(sweep["candidates"]) if name in c]
    xs = [sweep["candidates"][i][name] for i in on_axis]
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.subplots()
    filters = sweep["filters"]
    for j, (size, color) in enumerate(zip(filters, _colors(len(filters)), strict=True)):
        ax.plot(xs, [sweep["f1"][i][j] for i in on_axis], marker="o", ms=3, color=color,
                label=_filter_label(size))
        for i, c in enumerate(sweep["candidates"]):
            if name not in c:
                ax.axhline(sweep["f1"][i][j], color=color, ls="--", lw=0.8)
    best = sweep["best"]
    if name in best:
        ax.plot([best[name]], [sweep["best_f1"]], marker="*", ms=12, color="black",
                label=f"chosen ({name}={best[name]:g}, {_filter_label(best)})")
    ax.set(xlabel=name, ylabel="validation F1 at IoU 0.5 (all cells)", ylim=(0, 1))
    if name == "h":
        ax.set_xscale("log", base=2)
    ax.set_title(title or "Instance step sweep on validation (dashed: connected components)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _filter_label(size_filter: Mapping[str, Any]) -> str:
    fraction = size_filter.get("min_fraction") or 0.0
    if fraction:
        return f"cells >= {fraction:g} x typical area"
    return f"cells >= {size_filter.get('min_size', 0)} px"


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(max(n, 1))][:n]
