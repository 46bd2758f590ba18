"""Cell outlines as GeoJSON that QuPath imports: one Feature per cell, exact to the pixel.

Conventions (those of QuPath's GeoJSON import and export):

* Coordinates are pixels of the labelled image: x = column, y = row, origin at the top-left
  corner of the top-left pixel. Pixel ``(r, c)`` covers ``[c, c + 1] x [r, r + 1]`` and its
  centre is ``(c + 0.5, r + 0.5)``.
* Outlines run along pixel edges: every vertex is an integer, a polygon's area equals its
  cell's pixel count, and a pixel lies inside a polygon exactly when its centre does, so
  rasterising a polygon gives its cell back unchanged. Vertices in the middle of a straight
  run are dropped; nothing is smoothed.
* A cell whose pixels connect through their edges is a ``Polygon``, with one interior ring per
  hole. A cell in several pieces is a ``MultiPolygon``; pieces that meet only at a pixel corner
  are separate pieces touching at that point (valid, as a shared corner does not overlap).
* Rings are closed (first point == last point). Exterior rings have a positive signed
  (shoelace) area in these coordinates and holes a negative one: anticlockwise when the y
  axis points up, as RFC 7946 asks; on screen, where y points down, exteriors run clockwise.
  Rings touch each other at most at single corner points.
* Every Feature has a UUID ``id`` (QuPath keeps it as the object's ID; it is derived from
  ``source`` and the label, so the same call gives the same file) and ``properties``:
  ``objectType: "detection"`` (QuPath's light-weight object for cells and nuclei; its
  ``"cell"`` type expects a nucleus outline as well, which a label image does not have),
  ``label`` (the cell's value in the label image) and ``measurements``, a name -> number map
  (the form QuPath writes since v0.4) that holds ``label`` too, so that QuPath's measurement
  table can be joined with a measurement CSV.

Only numpy and scipy are needed (shapely reads the output but is not used to write it), and
nothing from celltune's inference is imported, so batch prediction can use this module.

Example:
    >>> labels = np.zeros((4, 5), np.int32)
    >>> labels[1:3, 1:4] = 7
    >>> [feature] = cells_to_features(labels)
    >>> feature["geometry"]["coordinates"]
    [[[1, 1], [4, 1], [4, 3], [1, 3], [1, 1]]]
    >>> feature["properties"]["objectType"], feature["properties"]["label"]
    ('detection', 7)
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from celltune.io import compact_labels, is_sparse, write_text

OBJECT_TYPE = "detection"
#: Namespace of the features' UUIDs (uuid5 of ``"<source>#<label>"``).
ID_NAMESPACE = uuid.UUID("960e1af1-7628-418d-8f55-9231ca74d3f9")

# Boundary edges, one kind per side of a pixel: (direction code, neighbour offset (dr, dc),
# start corner (dx, dy)). Each edge is directed so that its cell lies on its left when y
# points up, which makes exterior rings positive and holes negative.
_SIDES = (
    (0, (-1, 0), (0, 0)),  # top edge, towards +x
    (1, (0, 1), (1, 0)),  # right edge, towards +y
    (2, (1, 0), (1, 1)),  # bottom edge, towards -x
    (3, (0, -1), (0, 1)),  # left edge, towards -y
)
_STEP = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]])


def feature_collection(
    labels: np.ndarray,
    measurements: Iterable[Mapping[str, Any]] | None = None,
    *,
    source: str = "",
) -> dict[str, Any]:
    """A GeoJSON FeatureCollection with one Feature per cell of ``labels`` (0 = background).

    Args:
        labels: 2-D integer instance labels; every positive value is one cell.
        measurements: Rows with a ``label`` key and numbers (e.g. from
            :func:`celltune.inference.measurements.measure_cells`); each row's numbers become
            its cell's ``measurements``.
        source: Text that tells this image's cells apart from other images' in the IDs.
    """
    return {
        "type": "FeatureCollection",
        "features": cells_to_features(labels, measurements, source=source),
    }


def cells_to_features(
    labels: np.ndarray,
    measurements: Iterable[Mapping[str, Any]] | None = None,
    *,
    source: str = "",
) -> list[dict[str, Any]]:
    """One GeoJSON Feature per cell, in increasing label order (see the module's conventions).

    Raises:
        ValueError: ``labels`` is not a 2-D integer array of non-negative values, or a
            measurement is not a finite number.
    """
    labels = _checked(labels)
    rows = {int(row["label"]): row for row in measurements or ()}
    ids, work = compact_labels(labels) if is_sparse(labels) else (None, labels)
    features = []
    for k, box in enumerate(ndimage.find_objects(work), start=1):
        if box is None:
            continue
        label = k if ids is None else int(ids[k - 1])
        geometry = cell_geometry(work[box] == k, offset=(box[1].start, box[0].start))
        features.append(cell_feature(label, geometry, rows.get(label), source=source))
    return features


def write_geojson(
    path: str | os.PathLike,
    labels: np.ndarray,
    measurements: Iterable[Mapping[str, Any]] | None = None,
    *,
    source: str = "",
) -> Path:
    """Write :func:`feature_collection` as compact JSON, atomically; returns ``path``."""
    collection = feature_collection(labels, measurements, source=source)
    text = json.dumps(collection, separators=(",", ":"), allow_nan=False)
    return write_text(path, text + "\n")


def cell_geometry(mask: np.ndarray, offset: tuple[int, int] = (0, 0)) -> dict[str, Any]:
    """The GeoJSON geometry of a boolean mask's pixels, shifted by ``offset`` = (x, y).

    Raises:
        ValueError: the mask has no pixel set.
    """
    # 4-connected pieces: pixels meeting only at a corner go to separate polygons, which
    # keeps every ring simple (see _rings).
    pieces, _ = ndimage.label(mask)
    polygons = []
    for piece, box in enumerate(ndimage.find_objects(pieces), start=1):
        corner = (offset[0] + box[1].start, offset[1] + box[0].start)
        polygons.append(_polygon(_rings(pieces[box] == piece), corner))
    if not polygons:
        raise ValueError("cell_geometry: the mask is empty.")
    if len(polygons) == 1:
        return {"type": "Polygon", "coordinates": polygons[0]}
    return {"type": "MultiPolygon", "coordinates": polygons}


def _checked(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise ValueError(
            f"labels must be a 2-D integer array, got shape {labels.shape} and {labels.dtype}."
        )
    if labels.size and labels.min() < 0:
        raise ValueError("labels must be non-negative (0 = background).")
    return labels.astype(np.int64, copy=False) if labels.dtype == bool else labels


def cell_feature(
    label: int,
    geometry: dict[str, Any],
    row: Mapping[str, Any] | None = None,
    *,
    source: str = "",
) -> dict[str, Any]:
    """One cell's Feature (see the module's conventions) from its :func:`cell_geometry` and
    its measurement row (None: only ``label``).

    Raises:
        ValueError: a measurement is not a finite number.
    """
    measurements: dict[str, float | int] = {"label": label}
    for name, value in (row or {}).items():
        if name != "label":
            measurements[name] = _number(name, value)
    return {
        "type": "Feature",
        "id": str(uuid.uuid5(ID_NAMESPACE, f"{source}#{label}")),
        "geometry": geometry,
        "properties": {"objectType": OBJECT_TYPE, "label": label, "measurements": measurements},
    }


def _number(name: str, value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise ValueError(f"measurement {name!r} must be a number, got {value!r}.")
    if isinstance(value, int | np.integer):
        return int(value)
    if not math.isfinite(value):
        raise ValueError(f"measurement {name!r} is {value}; GeoJSON holds finite numbers only.")
    return float(value)


def _polygon(rings: list[np.ndarray], corner: tuple[int, int]) -> list[list[list[int]]]:
    """Rings of one 4-connected piece -> GeoJSON polygon coordinates (closed, shifted)."""
    shells = [ring for ring in rings if _signed_area(ring) > 0]
    holes = [ring for ring in rings if _signed_area(ring) < 0]
    # A 4-connected piece has exactly one outer boundary: anything else is a bug here.
    if len(shells) != 1:
        raise RuntimeError(f"traced {len(shells)} exterior rings for one connected piece.")
    shift = np.asarray(corner)
    return [(np.vstack([ring, ring[:1]]) + shift).tolist() for ring in [*shells, *holes]]


def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _edges(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pixel edge between the mask and the background: start x, start y, direction."""
    height, width = mask.shape
    padded = np.pad(mask, 1)
    xs, ys, codes = [], [], []
    for code, (dr, dc), (sx, sy) in _SIDES:
        neighbour = padded[1 + dr : 1 + dr + height, 1 + dc : 1 + dc + width]
        rows, cols = np.nonzero(mask & ~neighbour)
        xs.append(cols + sx)
        ys.append(rows + sy)
        codes.append(np.full(rows.size, code))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(codes)


def _rings(mask: np.ndarray) -> list[np.ndarray]:
    """The boundary of a 4-connected boolean mask as simple rings of corner vertices (x, y).

    Edges are chained head to tail. Where two edges leave a vertex (two pixels of the piece
    meet there only diagonally) the chain always turns left, so each of the two edges arriving
    there gets its own successor. A ring that passes a vertex twice is cut there into two
    rings touching at that point; as the piece is 4-connected, exactly one of the rings is its
    outer boundary and every other one a hole.
    """
    x, y, code = _edges(mask)
    columns = mask.shape[1] + 1
    start = y * columns + x
    order = np.argsort(start, kind="stable")
    x, y, code, start = x[order], y[order], code[order], start[order]
    end = (y + _STEP[code, 1]) * columns + x + _STEP[code, 0]
    first = np.searchsorted(start, end, side="left")
    two = np.searchsorted(start, end, side="right") - first == 2
    left_is_second = two & (code[first] != (code + 1) % 4)
    following = np.where(left_is_second, first + 1, first).tolist()
    seen = bytearray(len(following))
    rings: list[np.ndarray] = []
    for edge in range(len(following)):
        chain = []
        while not seen[edge]:
            seen[edge] = 1
            chain.append(edge)
            edge = following[edge]
        if chain:
            turns = code[chain] != np.roll(code[chain], 1)
            corners = np.stack([x[chain][turns], y[chain][turns]], axis=1)
            rings += _simple_loops(corners)
    return rings


def _simple_loops(ring: np.ndarray) -> list[np.ndarray]:
    """Cut a closed ring at every vertex it visits twice, into loops that visit each once."""
    loops = []
    stack: list[int] = []
    at: dict[tuple[int, int], int] = {}
    for index, vertex in enumerate(map(tuple, ring.tolist())):
        if vertex in at:
            cut = at[vertex]
            loops.append(ring[stack[cut:]])
            for dropped in stack[cut + 1 :]:
                del at[tuple(ring[dropped].tolist())]
            del stack[cut + 1 :]
        else:
            at[vertex] = len(stack)
            stack.append(index)
    loops.append(ring[stack])
    return loops
