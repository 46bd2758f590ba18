"""Block-parallel prediction of whole slides, on one process, local workers or a Dask cluster.

A slide's plane is cut into ``block``-sized cores (:func:`plan_blocks`). Each block reads its
core plus ``margin`` pixels of labelling context plus ``context`` pixels of network context,
predicts that region with the :class:`~celltune.inference.predict.Predictor`, labels the
core-plus-margin window with the predictor's instance step and writes only its core into the
output label array. So every output pixel is written by exactly one block, and blocks never
write the same zarr chunk (cores are whole chunks).

Cells crossing a core edge are whole and counted once because every block that sees a cell
gives it the same id, computed from the cell itself: its centroid picks the owning core
(like :func:`~celltune.inference.instances.label_by_windows`), and its first pixel in raster
order, relative to the owner's window, numbers it within the owner. Centroids are exact
(integer sums), so two windows that label a cell with the same pixels agree on its id. That
holds for a cell narrower than ``margin``: use a margin wider than the largest cell. Ids are
unique over the slide but not consecutive.

The run's relative size filter (``min_fraction`` of the typical cell area) needs every cell's
area, which no block sees: blocks apply the absolute ``min_size`` only, and once all have
finished the driver counts the cells' areas core by core (:func:`cell_areas`) and removes
those below the same threshold as one process would (:func:`drop_cells`).

Memory per worker is bounded by one block's window, not the slide: about 150 bytes per
window pixel (image, probability, the watershed), ~300 MB for the default 1024 + 2x192.

Workers: 1 runs the blocks in this process (no Dask needed); more start a
``distributed.LocalCluster`` of that many single-threaded processes, or threads when
``distributed`` is not installed; ``scheduler="tcp://host:8786"`` uses a running cluster
whose workers can read the slide's path and write the output's.

Example:
    >>> labels = predict_blocks(predictor, slide.source, writer, slide.shape_yx)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from celltune.errors import ConfigError
from celltune.inference.predict import Predictor
from celltune.io import write_text
from celltune.ome import LabelsWriter, SlideSource

#: Sidecar in the partial label group listing finished blocks (for resume).
DONE_FILE = "celltune_blocks.json"
Box = tuple[int, int, int, int]  # y0, y1, x0, x1


@dataclass(frozen=True)
class Block:
    """One unit of work: ``core`` is written, ``window`` labelled, ``read`` predicted."""

    index: int
    core: Box
    window: Box
    read: Box


@dataclass(frozen=True)
class BlockPlan:
    """How a plane is cut; also the fingerprint a resumed run must match."""

    shape: tuple[int, int]
    block: int
    margin: int
    context: int

    def __post_init__(self) -> None:
        if self.block < 32 or self.margin < 0 or self.context < 0:
            raise ConfigError(
                f"--block must be >= 32 pixels and margins >= 0, got block {self.block}, "
                f"margin {self.margin}, context {self.context}."
            )

    @property
    def grid(self) -> tuple[int, int]:
        """Blocks along y and x."""
        return math.ceil(self.shape[0] / self.block), math.ceil(self.shape[1] / self.block)

    @property
    def id_stride(self) -> int:
        """Ids reserved per block: one per window pixel."""
        side = self.block + 2 * self.margin
        return side * side

    def blocks(self) -> list[Block]:
        """Every block, in raster order of the cores."""
        out = []
        ny, nx = self.grid
        for by in range(ny):
            for bx in range(nx):
                core = self._box(by, bx, 0)
                out.append(Block(by * nx + bx, core, self._box(by, bx, self.margin),
                                 self._box(by, bx, self.margin + self.context)))
        return out

    def _box(self, by: int, bx: int, pad: int) -> Box:
        h, w = self.shape
        y0, x0 = by * self.block, bx * self.block
        return (max(0, y0 - pad), min(h, y0 + self.block + pad),
                max(0, x0 - pad), min(w, x0 + self.block + pad))

    def label_dtype(self) -> type:
        """int32 when every possible id fits, else int64."""
        ny, nx = self.grid
        return np.int32 if ny * nx * self.id_stride < np.iinfo(np.int32).max else np.int64


def plan_blocks(shape: tuple[int, int], block: int = 1024, margin: int = 128,
                context: int = 64) -> BlockPlan:
    """A :class:`BlockPlan` for a ``(height, width)`` plane."""
    return BlockPlan((int(shape[0]), int(shape[1])), int(block), int(margin), int(context))


def global_ids(cells: np.ndarray, plan: BlockPlan, window: Box) -> tuple[np.ndarray, np.ndarray]:
    """Slide-wide ids of a window's cells (lookup table by local id) and each cell's owner.

    The owner is the block whose core holds the cell's centroid; the id is the owner's index
    times :attr:`BlockPlan.id_stride` plus the cell's first pixel's position in the owner's
    window, plus one.
    """
    n = int(cells.max()) if cells.size else 0
    lut = np.zeros(n + 1, dtype=np.int64)
    owner = np.full(n + 1, -1, dtype=np.int64)
    if n == 0:
        return lut, owner
    wy, _, wx, _ = window
    flat = np.flatnonzero(cells)
    ids = cells.ravel()[flat]
    ys, xs = np.divmod(flat, cells.shape[1])
    area = np.bincount(ids, minlength=n + 1)
    present = area > 0
    present[0] = False
    safe = np.maximum(area, 1)
    # Integer sums are exact in float64, so every window finds the same centroid.
    cy = (np.bincount(ids, weights=ys, minlength=n + 1) + area * wy) / safe
    cx = (np.bincount(ids, weights=xs, minlength=n + 1) + area * wx) / safe
    first = np.full(n + 1, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, ids, flat)
    fy, fx = np.divmod(np.where(present, first, 0), cells.shape[1])
    ny, nx = plan.grid
    by = np.clip((cy // plan.block).astype(np.int64), 0, ny - 1)
    bx = np.clip((cx // plan.block).astype(np.int64), 0, nx - 1)
    side = plan.block + 2 * plan.margin
    oy = np.maximum(by * plan.block - plan.margin, 0)
    ox = np.maximum(bx * plan.block - plan.margin, 0)
    # A cell wider than the margin can start outside its owner's window: clip, rarely shared.
    py = np.clip(fy + wy - oy, 0, side - 1)
    px = np.clip(fx + wx - ox, 0, side - 1)
    index = by * nx + bx
    lut[present] = (index * plan.id_stride + py * side + px + 1)[present]
    owner[present] = index[present]
    return lut, owner


@dataclass(frozen=True)
class BlockJob:
    """What a worker needs besides the predictor: where to read and write (picklable)."""

    source: SlideSource
    labels: str  # path of the label array (partial group level 0)
    probability: str | None
    plan: BlockPlan
    threads: int = 0  # torch threads per worker; 0 leaves torch's default
    mask_only: bool = False  # write the foreground (1) instead of cell ids (--instances none)


def run_block(predictor: Predictor, job: BlockJob, block: Block) -> dict[str, int]:
    """Predict, label and write one block; returns its index, owned cells and peak RSS (KiB).

    With ``job.mask_only`` the core's foreground mask (uint8, 1 = foreground) is written
    instead of cells, and no cell is counted.
    """
    import zarr

    if job.threads:
        import torch

        torch.set_num_threads(job.threads)
    ry0, ry1, rx0, rx1 = block.read
    image = job.source.read((slice(ry0, ry1), slice(rx0, rx1)))
    prediction = predictor.predict(image)
    wy0, wy1, wx0, wx1 = block.window
    inner = (slice(wy0 - ry0, wy1 - ry0), slice(wx0 - rx0, wx1 - rx0))
    cy0, cy1, cx0, cx1 = block.core
    core = (slice(cy0 - wy0, cy1 - wy0), slice(cx0 - wx0, cx1 - wx0))
    out = zarr.open_array(store=job.labels, mode="r+")
    owned = 0
    if job.mask_only:
        out[cy0:cy1, cx0:cx1] = prediction.mask[inner][core].astype(out.dtype)
    else:
        classes = (None if prediction.classes is None
                   else prediction.classes[(slice(None), *inner)])
        # The relative size rule needs the whole slide's cells (see drop_cells); blocks keep
        # the absolute one only.
        cells = predictor.with_options(instances={"min_fraction": 0.0}).label(
            prediction.mask[inner], classes)
        lut, owner = global_ids(cells, job.plan, block.window)
        out[cy0:cy1, cx0:cx1] = lut[cells[core]].astype(out.dtype, copy=False)
        owned = int(np.count_nonzero(owner == block.index))
    if job.probability:
        prob = prediction.probability[inner][core]
        array = zarr.open_array(store=job.probability, mode="r+")
        array[cy0:cy1, cx0:cx1] = np.round(prob * 255.0).astype(np.uint8)
    return {"index": block.index, "cells": owned, "peak_rss_kib": _peak_rss_kib()}


def _peak_rss_kib() -> int:
    """This process's peak RSS: VmHWM on Linux (its own address space; ru_maxrss can carry
    the parent's peak over fork and exec), else ru_maxrss."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak // 1024 if sys.platform == "darwin" else peak)


# --- resume ----------------------------------------------------------------------------------


def read_record(writer: LabelsWriter, fingerprint: dict[str, Any]) -> dict[str, Any]:
    """A previous run's record (``done`` blocks, ``min_area`` of the relative size filter
    once chosen) when its fingerprint matches; empty otherwise."""
    path = writer.partial / DONE_FILE
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if record.get("fingerprint") == fingerprint else {}


def read_done(writer: LabelsWriter, fingerprint: dict[str, Any]) -> set[int]:
    """Blocks a previous run of the same plan and predictor finished (empty otherwise)."""
    return set(read_record(writer, fingerprint).get("done", []))


def write_done(writer: LabelsWriter, fingerprint: dict[str, Any], done: set[int],
               min_area: int | None = None) -> None:
    """Record finished blocks atomically (a block is listed only after its write returned),
    and the relative size filter's threshold once it is chosen."""
    record: dict[str, Any] = {"fingerprint": fingerprint, "done": sorted(done)}
    if min_area is not None:
        record["min_area"] = int(min_area)
    write_text(writer.partial / DONE_FILE, json.dumps(record))


def fingerprint(plan: BlockPlan, predictor: Predictor, **extra: Any) -> dict[str, Any]:
    """What must match for finished blocks to be reused: the plan, the predictor's settings
    (threshold, TTA, tiling, instance step, ...), the slide's normalisation and ``extra``.

    Example:
        >>> key = fingerprint(plan, predictor, output="cells")  # doctest: +SKIP
    """
    settings = {k: v for k, v in predictor.describe().items() if k not in ("device", "batch_size")}
    return json.loads(json.dumps({"plan": asdict(plan), "predictor": settings,
                                  "bounds": predictor.bounds, **extra}, default=str))


# --- the relative size filter, after all blocks ----------------------------------------------


def cell_areas(array: Any, plan: BlockPlan) -> tuple[np.ndarray, np.ndarray]:
    """Every cell's id and area (pixels) in a finished label array, read core by core, so
    memory is one core plus two numbers per cell.

    Example:
        >>> ids, areas = cell_areas(writer.open_array("r"), plan)  # doctest: +SKIP
    """
    ids, counts = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for b in plan.blocks():
        y0, y1, x0, x1 = b.core
        found, n = np.unique(np.asarray(array[y0:y1, x0:x1]), return_counts=True)
        keep = found != 0
        ids.append(found[keep].astype(np.int64))
        counts.append(n[keep].astype(np.int64))
    every, where = np.unique(np.concatenate(ids), return_inverse=True)
    areas = np.bincount(where, weights=np.concatenate(counts), minlength=every.size)
    return every, areas.astype(np.int64)


def drop_cells(array: Any, plan: BlockPlan, ids: np.ndarray) -> None:
    """Set the pixels of cells ``ids`` to background, core by core (cores without any of
    them are not rewritten)."""
    ids = np.unique(np.asarray(ids, dtype=np.int64))
    if ids.size == 0:
        return
    for b in plan.blocks():
        y0, y1, x0, x1 = b.core
        core = np.asarray(array[y0:y1, x0:x1])
        gone = np.isin(core, ids)
        if gone.any():
            core[gone] = 0
            array[y0:y1, x0:x1] = core


# --- execution -------------------------------------------------------------------------------


@contextlib.contextmanager
def dask_client(workers: int = 1, scheduler: str | None = None) -> Iterator[Any]:
    """A ``distributed.Client`` for ``scheduler``, or a local cluster of ``workers``
    single-threaded processes; None for one worker (blocks run in this process)."""
    if scheduler is None and workers <= 1:
        yield None
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        if scheduler:
            raise ConfigError(
                "--scheduler needs dask's distributed package: pip install 'celltune[ome]'."
            ) from exc
        yield None  # threads instead, see run_blocks
        return
    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as exc:
            raise ConfigError(f"--scheduler {scheduler}: no Dask scheduler answers ({exc}).") from exc
        with client:
            yield client
        return
    # Starting worker processes sets OMP_NUM_THREADS=1, MALLOC_TRIM_THRESHOLD_ and others in
    # *this* process's environment (dask's pre-spawn settings) and leaves them there; they
    # belong to the workers, so this process gets its own environment back.
    saved = dict(os.environ)
    try:
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            _restore_environ(saved)
            yield client
    finally:
        _restore_environ(saved)


def _restore_environ(saved: dict[str, str]) -> None:
    for key in set(os.environ) - set(saved):
        del os.environ[key]
    os.environ.update(saved)


def fan_out(
    fn: Callable[[Any, Any, Any], Any],
    shared: Any,
    job: Any,
    items: Sequence[Any],
    *,
    client: Any = None,
    workers: int = 1,
    catch: bool = False,
) -> Iterator[tuple[int, Any]]:
    """Yield ``(position, fn(shared, job, item))`` for each of ``items`` as it finishes.

    On a Dask ``client`` ``shared`` (the predictor) is sent once to every worker, which
    keeps it for all its items; with ``workers`` > 1 and no client, threads of this process
    share it; otherwise the items run here, in order. An exception from ``fn`` (or a lost
    worker) cancels what has not started and propagates, unless ``catch``: then it is
    yielded in place of that item's result and the others go on. Stopping the iteration early
    cancels the rest too.

    Example:
        >>> for i, result in fan_out(run_block, predictor, job, blocks):  # doctest: +SKIP
        ...     print(i, result["cells"])
    """
    if client is not None:
        from distributed import as_completed

        remote = client.scatter(shared, broadcast=True)
        n = len(items)
        futures = client.map(fn, [remote] * n, [job] * n, list(items), pure=False)
        where = {future.key: i for i, future in enumerate(futures)}
        try:
            for future in as_completed(futures):
                yield where[future.key], _outcome(future.result, catch)
        finally:
            client.cancel(futures)
    elif workers > 1:
        from concurrent.futures import ThreadPoolExecutor, as_completed

        with ThreadPoolExecutor(workers) as pool:
            pending = {pool.submit(fn, shared, job, item): i for i, item in enumerate(items)}
            try:
                for future in as_completed(pending):
                    yield pending[future], _outcome(future.result, catch)
            finally:
                for future in pending:
                    future.cancel()
    else:
        for i, item in enumerate(items):
            yield i, _outcome(lambda item=item: fn(shared, job, item), catch)


def _outcome(result: Callable[[], Any], catch: bool) -> Any:
    """``result()``, or the exception it raised when ``catch``."""
    try:
        return result()
    except Exception as exc:
        if not catch:
            raise
        return exc


def run_blocks(
    predictor: Predictor,
    job: BlockJob,
    blocks: list[Block],
    *,
    client: Any = None,
    workers: int = 1,
    on_result: Callable[[dict[str, int]], None] | None = None,
) -> list[dict[str, int]]:
    """Run ``blocks`` on ``client`` (Dask), on ``workers`` threads, or here, one by one
    (:func:`fan_out`).

    ``on_result`` is called in this process as each block finishes. The first failing block
    cancels the rest and its error is raised.
    """
    results: list[dict[str, int]] = []
    for _, result in fan_out(run_block, predictor, job, blocks, client=client, workers=workers):
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results
