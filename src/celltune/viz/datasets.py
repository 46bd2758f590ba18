"""Dataset figures: a contact sheet of images with their outlines, and augmentation previews.

The data comes from :mod:`celltune.data` as arrays
(:func:`~celltune.data.synthetic.contact_sheet_panels`,
:func:`~celltune.data.augment.augmented_views`); the functions here only draw. Figures are
built without pyplot, so nothing here touches global state or needs a display.

Example:
    >>> from celltune.data.synthetic import contact_sheet_panels        # doctest: +SKIP
    >>> save_png(contact_sheet(contact_sheet_panels("data/synth")), "sheet.png")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from celltune.data.synthetic import SheetPanel
from celltune.data.targets import boundary_mask
from celltune.io import atomic_path

#: Colour of instance outlines drawn over images (RGB in [0, 1]).
OUTLINE_RGB = (1.0, 0.85, 0.0)
_OUTLINE = np.array(OUTLINE_RGB, np.float32)


def save_png(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as PNG atomically, at its own size and dpi (no cropping).

    Unlike :func:`celltune.viz.curves.save_figure` (dpi 110, tight bounding box) this keeps
    the pixel size the figure was built for, so a contact sheet stays the file it always was.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def contact_sheet(panels: Sequence[SheetPanel]) -> Figure:
    """Grid of images, four per row, with outlines blended in and a title over each.

    Raises:
        ValueError: no panels.
    """
    if not panels:
        raise ValueError("contact_sheet needs at least one panel")
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(3.2 * cols, 3.4 * rows), dpi=100, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, panel in zip(axes.ravel(), panels, strict=False):
        ax.imshow(_with_outline(panel.image, panel.outline), interpolation="nearest")
        ax.set_title(panel.title, fontsize=9)
    return fig


def _with_outline(rgb: np.ndarray, edge: np.ndarray | None) -> np.ndarray:
    if edge is None:
        return rgb
    out = rgb.copy()
    out[edge] = 0.35 * out[edge] + 0.65 * _OUTLINE
    return out


def augmentation_preview(
    views: Sequence[tuple[np.ndarray, np.ndarray]], preset: str
) -> Figure:
    """Augmented versions of one image/mask pair, each with the mask outline on top.

    Args:
        views: ``(image, mask)`` pairs: float32 ``(H, W, C)`` in ``[0, 1]`` (C = 1 or 3) and
            an integer ``(H, W)`` mask or instance map.
        preset: the augmentation preset's name, for the panel titles (``"<preset> #k"``).

    Raises:
        ValueError: no views.
    """
    n = len(views)
    if not n:
        raise ValueError("augmentation_preview needs at least one view")
    cols = min(n, 4)
    rows = -(-n // cols)
    fig = Figure(figsize=(3 * cols, 3 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for k, ax in enumerate(axes):
        ax.set_axis_off()
        if k >= n:
            continue
        _show_pair(ax, *views[k])
        ax.set_title(f"{preset} #{k}", fontsize=9)
    return fig


def _show_pair(ax: Axes, image: np.ndarray, mask: np.ndarray) -> None:
    shown = image[..., 0] if image.shape[-1] == 1 else image
    ax.imshow(shown, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    overlay = np.zeros((*mask.shape, 4), dtype=np.float32)
    # Outlines from instance ids also separate touching cells, which a contour of mask > 0
    # would merge.
    overlay[boundary_mask(mask)] = (*OUTLINE_RGB, 1.0)
    ax.imshow(overlay, interpolation="nearest")
