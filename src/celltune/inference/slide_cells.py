"""Per-cell tables of a whole slide: QuPath GeoJSON and a measurement CSV, block by block.

``<stem>_cells.geojson`` and ``<stem>_cells.csv`` hold for a slide what they hold for an
ordinary image (the outlines of :mod:`celltune.integrations.geojson`, the columns of
:mod:`celltune.inference.measurements`, in the slide's full-resolution pixels, origin at its
top-left corner), made from a finished label array without ever holding it whole:

1. every cell's bounding box, read core by core and merged over the cores a cell crosses;
2. each core's cells, those whose box starts in it, outlined and measured from one read of
   the union of their boxes (labels, and the slide's own pixels for the intensity columns).

Memory is one such region (a core and the margin its cells reach past it) plus five numbers
per cell. The files are streamed to temporary files beside their destination and renamed into
place only when complete. Cells are listed core by core in raster order, by increasing label
within a core; a cell crossing a block border is one cell with one outline.

Example:
    >>> plan = plan_blocks(slide.shape_yx, block=1024, margin=128, context=0)  # doctest: +SKIP
    >>> tables = write_slide_cells(labels, plan, slide.source, source="s",         # doctest: +SKIP
    ...                            geojson="out/s_cells.geojson", csv="out/s_cells.csv")
    >>> tables.cells                                                               # doctest: +SKIP
    48213
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from celltune.inference.measurements import measure_cells, measurement_columns
from celltune.inference.parallel import BlockPlan
from celltune.integrations.geojson import cell_feature, cell_geometry
from celltune.io import atomic_path, compact_labels
from celltune.ome import SlideSource


@dataclass
class SlideCells:
    """What :func:`write_slide_cells` wrote: the number of cells and the files by kind
    (``"geojson"``, ``"csv"``)."""

    cells: int
    files: dict[str, Path] = field(default_factory=dict)


def cell_boxes(array: Any, plan: BlockPlan) -> tuple[np.ndarray, np.ndarray]:
    """Every cell's id and bounding box ``(row0, row1, col0, col1)`` (ends exclusive) in a
    label array, read core by core: ``(ids, boxes)`` with ``ids`` increasing.

    Example:
        >>> labels = zarr.open_array("s.zarr/labels/cells/0")  # doctest: +SKIP
        >>> ids, boxes = cell_boxes(labels, plan)               # doctest: +SKIP
    """
    ids, boxes = [np.zeros(0, np.int64)], [np.zeros((0, 4), np.int64)]
    for b in plan.blocks():
        y0, y1, x0, x1 = b.core
        cells, compact = compact_labels(np.asarray(array[y0:y1, x0:x1]))
        found = [(r.start, r.stop, c.start, c.stop) for r, c in ndimage.find_objects(compact)]
        ids.append(cells)
        boxes.append(np.array(found, np.int64).reshape(-1, 4) + [y0, y0, x0, x0])
    every, where = np.unique(np.concatenate(ids), return_inverse=True)
    parts = np.concatenate(boxes)
    starts = np.full((every.size, 2), np.iinfo(np.int64).max, np.int64)
    ends = np.full((every.size, 2), -1, np.int64)
    np.minimum.at(starts, where, parts[:, [0, 2]])
    np.maximum.at(ends, where, parts[:, [1, 3]])
    return every, np.stack([starts[:, 0], ends[:, 0], starts[:, 1], ends[:, 1]], axis=1)


def write_slide_cells(
    array: Any,
    plan: BlockPlan,
    pixels: SlideSource | None,
    *,
    source: str = "",
    geojson: str | os.PathLike | None = None,
    csv_path: str | os.PathLike | None = None,
    on_block: Callable[[int, int], None] | None = None,
) -> SlideCells:
    """Write a slide's cell outlines (GeoJSON) and measurements (CSV) from its label array.

    Args:
        array: the finished label array (0 = background), sliced lazily (a Zarr array).
        plan: the block plan its cores are read by.
        pixels: the slide's pixels for the intensity columns (None leaves them out).
        source: text that tells this slide's cells' GeoJSON IDs apart from other images'.
        geojson, csv_path: the files to write (None: not that one).
        on_block: called with (cores done, cores in all) during the second pass.

    Raises:
        OutputError: a file cannot be written (nothing is left at its path).
        ImageReadError: the slide's pixels cannot be read (names the region).
    """
    ids, boxes = cell_boxes(array, plan)
    blocks = plan.blocks()
    nx = plan.grid[1]
    owner = (boxes[:, 0] // plan.block) * nx + boxes[:, 2] // plan.block
    order = np.argsort(owner, kind="stable")  # ids stay increasing within a core
    splits = np.searchsorted(owner[order], np.arange(len(blocks) + 1))
    channels = None
    if pixels is not None and ids.size:
        channels = pixels.read((slice(0, 1), slice(0, 1))).shape[-1]
    columns = measurement_columns(channels)
    written: dict[str, Path] = {}
    with ExitStack() as stack:
        geo_fh = csv_writer = None
        if geojson is not None:
            tmp = stack.enter_context(atomic_path(geojson))
            geo_fh = stack.enter_context(tmp.open("w", encoding="utf-8"))
            geo_fh.write('{"type":"FeatureCollection","features":[')
            written["geojson"] = Path(geojson)
        if csv_path is not None:
            tmp = stack.enter_context(atomic_path(csv_path))
            csv_fh = stack.enter_context(tmp.open("w", encoding="utf-8", newline=""))
            csv_writer = csv.DictWriter(csv_fh, fieldnames=list(columns), lineterminator="\n")
            csv_writer.writeheader()
            written["csv"] = Path(csv_path)
        first = True
        for index in range(len(blocks)):
            mine = order[splits[index]:splits[index + 1]]
            for label, row, geometry in _core_cells(array, pixels, ids[mine], boxes[mine]):
                if csv_writer is not None:
                    csv_writer.writerow(row)
                if geo_fh is not None:
                    feature = cell_feature(label, geometry, row, source=source)
                    geo_fh.write(("" if first else ",")
                                 + json.dumps(feature, separators=(",", ":"), allow_nan=False))
                    first = False
            if on_block is not None:
                on_block(index + 1, len(blocks))
        if geo_fh is not None:
            geo_fh.write("]}\n")
    return SlideCells(int(ids.size), written)


def _core_cells(array: Any, pixels: SlideSource | None, ids: np.ndarray, boxes: np.ndarray):
    """(label, measurement row, outline) of the given cells, from one read of their boxes."""
    if ids.size == 0:
        return
    y0, x0 = boxes[:, [0, 2]].min(axis=0)
    y1, x1 = boxes[:, [1, 3]].max(axis=0)
    region = np.asarray(array[y0:y1, x0:x1])
    cells, compact = compact_labels(np.where(np.isin(region, ids), region, 0))
    image = None if pixels is None else pixels.read((slice(y0, y1), slice(x0, x1)))
    rows = measure_cells(compact, image, offset=(int(y0), int(x0)))
    for k, (label, box, row) in enumerate(zip(cells, ndimage.find_objects(compact), rows,
                                              strict=True), start=1):
        row["label"] = int(label)
        offset = (int(x0) + box[1].start, int(y0) + box[0].start)
        yield int(label), row, cell_geometry(compact[box] == k, offset=offset)

