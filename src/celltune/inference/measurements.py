"""Per-cell measurements of instance labels, from scikit-image's ``regionprops_table``.

One row per cell, in increasing label order, with these columns (all in pixel units; a pixel
size is not applied):

* ``label``: the cell's value in the label image;
* ``area``: its number of pixels;
* ``centroid_x``, ``centroid_y``: the mean of its pixel centres in the coordinates of the
  GeoJSON outlines and of QuPath: x = column, y = row, origin at the top-left corner of the
  image, so the centre of pixel (row r, column c) is (c + 0.5, r + 0.5). Subtract 0.5 to get
  numpy / scikit-image index coordinates;
* ``mean_intensity``: the mean over the cell of the image as read (raw values, before any
  normalisation); for an image with several channels, of the channels' average. Such images
  add ``mean_intensity_ch0``, ``mean_intensity_ch1``, ... per channel;
* ``eccentricity``, ``major_axis_length``, ``minor_axis_length``: of the ellipse with the
  cell's second moments (0, 0 and 0 for a single pixel; 1 for a one-pixel-wide line);
* ``perimeter``: scikit-image's estimate of the outline length, which is shorter than the
  staircase of pixel edges the GeoJSON outline follows.

Without an image the intensity columns are left out. Floats keep 7 significant digits.

Example:
    >>> labels = np.zeros((4, 6), np.int32)
    >>> labels[1:3, 2:5] = 1
    >>> [row] = measure_cells(labels, np.full((4, 6), 10.0))
    >>> row["area"], row["centroid_x"], row["centroid_y"], row["mean_intensity"]
    (6, 3.5, 2.0, 10.0)
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from skimage.measure import regionprops_table

from celltune.io import compact_labels, is_sparse

SHAPE_COLUMNS = (
    "label",
    "area",
    "centroid_x",
    "centroid_y",
    "eccentricity",
    "perimeter",
    "major_axis_length",
    "minor_axis_length",
)
# Our column -> regionprops_table's key.
_PROPS = {
    "label": "label",
    "area": "area",
    "centroid_x": "centroid-1",
    "centroid_y": "centroid-0",
    "eccentricity": "eccentricity",
    "perimeter": "perimeter",
    "major_axis_length": "axis_major_length",
    "minor_axis_length": "axis_minor_length",
}
_REGIONPROPS = ("label", "area", "centroid", "eccentricity", "perimeter", "axis_major_length",
                "axis_minor_length")
_INTEGER_COLUMNS = {"label", "area"}


def measurement_columns(channels: int | None) -> tuple[str, ...]:
    """The columns of :func:`measure_cells` for an image with ``channels`` (None: no image)."""
    if channels is None:
        return SHAPE_COLUMNS
    per_channel = tuple(f"mean_intensity_ch{c}" for c in range(channels)) if channels > 1 else ()
    return (*SHAPE_COLUMNS[:4], "mean_intensity", *per_channel, *SHAPE_COLUMNS[4:])


def measure_cells(
    labels: np.ndarray,
    image: np.ndarray | None = None,
    *,
    offset: tuple[int, int] = (0, 0),
) -> list[dict[str, int | float]]:
    """Measure every cell of ``labels`` (0 = background); see the module for the columns.

    Args:
        labels: 2-D integer instance labels.
        image: The image the labels belong to, ``(H, W)`` or ``(H, W, C)``; None leaves out
            the intensity columns.
        offset: ``(row, column)`` of ``labels``' top-left pixel in a larger image (a region
            of a slide); the centroids are given in that image's coordinates.

    Raises:
        ValueError: the image's height and width differ from the labels'.
    """
    labels = np.asarray(labels)
    channels = None
    if image is not None:
        image = np.asarray(image)
        image = image[..., None] if image.ndim == 2 else image
        if image.shape[:2] != labels.shape:
            raise ValueError(
                f"image of shape {image.shape[:2]} does not match labels of shape {labels.shape}."
            )
        channels = image.shape[-1]
    columns = measurement_columns(channels)
    if not labels.any():
        return []
    props = [*_REGIONPROPS, "intensity_mean"] if image is not None else list(_REGIONPROPS)
    ids, work = compact_labels(labels) if is_sparse(labels) else (None, labels)
    table = regionprops_table(work, intensity_image=image, properties=props)
    values = {name: table[key] for name, key in _PROPS.items()}
    if ids is not None:
        values["label"] = ids[table["label"] - 1]
    # Pixel centres at +0.5: QuPath's frame.
    values["centroid_x"] = values["centroid_x"] + (offset[1] + 0.5)
    values["centroid_y"] = values["centroid_y"] + (offset[0] + 0.5)
    if channels is not None:
        means = np.stack([table[f"intensity_mean-{c}"] for c in range(channels)], axis=1)
        values["mean_intensity"] = means.mean(axis=1)
        values.update({f"mean_intensity_ch{c}": means[:, c] for c in range(channels)})
    return [
        {name: _value(name, values[name][i]) for name in columns} for i in range(len(table["label"]))
    ]


def measurements_csv(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """The rows as CSV text with a header line (``columns``), one line per cell."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _value(name: str, value: Any) -> int | float:
    if name in _INTEGER_COLUMNS:
        return int(value)
    return float(f"{float(value):.7g}")
