"""Predict whole slides (OME-Zarr, OME-TIFF) block by block into NGFF label images.

For every slide ``<stem>.ome.zarr`` / ``<stem>.ome.tif`` the output folder receives
``<stem>.zarr`` holding ``labels/cells`` (NGFF image-label, int32 or int64 instance ids,
0 = background; the slide's pixel size in its ``scale``) and, with ``save_prob``,
``probability`` (uint8, probability x 255). With ``instances="none"`` it holds
``labels/mask`` instead (uint8, 1 = foreground), as ordinary files get only their mask. With
``in_place`` the labels join the input OME-Zarr instead, where viewers find them beside the
image. An OME-TIFF input also gets ``<stem>_labels.ome.tif`` (``<stem>_mask.ome.tif``). A
slide whose blocks all finished is committed; one that failed leaves no ``labels/cells``
(its partial group stays, hidden, for ``resume``). Bad slides are reported and skipped; the
batch continues.

The run's settings apply as for ordinary files, and ``threshold``, ``tta``, ``tile``,
``overlap``, ``batch_size``, ``instances`` and ``min_size`` override them the same way
(``min_size`` in the slide's pixels). The relative size filter (``min_fraction`` of the
typical cell area) is applied over the whole slide once all its blocks are done, so a slide
loses the same cells as one image of it predicted in one piece would.

With ``geojson`` / ``cells_csv`` the output folder also receives ``<stem>_cells.geojson``
(cell outlines and measurements for QuPath) and ``<stem>_cells.csv``, the same files as for an
ordinary image, written block by block from the finished labels
(:mod:`celltune.inference.slide_cells`).

Example:
    >>> batch = predict_slides("runs/unet", ["slide.ome.zarr"], "out", workers=2)  # doctest: +SKIP
    >>> batch.slides[0].cells                                                    # doctest: +SKIP
    48213
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from celltune.errors import CelltuneError, ConfigError, DataError, RunError
from celltune.inference.batch import OUTPUT_ENDINGS, check_cell_tables
from celltune.inference.files import Failure
from celltune.inference.instances import relative_min_size
from celltune.inference.parallel import (
    DONE_FILE,
    BlockJob,
    cell_areas,
    dask_client,
    drop_cells,
    fingerprint,
    plan_blocks,
    read_record,
    run_blocks,
    write_done,
)
from celltune.inference.predict import Predictor
from celltune.ome import (
    OME_TIFF_SUFFIXES,
    Slide,
    create_ngff_labels,
    create_ome_zarr,
    is_slide,
    is_zarr_path,
    open_slide,
)

#: Pixels read to estimate a slide's normalisation percentiles.
OVERVIEW_PIXELS = 4_000_000
LABEL_NAME = "cells"
#: The label image written instead of cells with ``instances="none"`` (1 = foreground).
MASK_NAME = "mask"
#: Values of ``instances`` (None keeps the run's tuned step).
INSTANCE_CHOICES = ("watershed", "components", "none")
#: Block-done records are saved at most this often (seconds), and at the end.
_SAVE_EVERY = 2.0


@dataclass
class SlideResult:
    """One slide's outputs and numbers (peak RSS: the largest of any worker, KiB; ``cells``
    is None when only the mask was written)."""

    path: Path
    labels: Path
    cells: int | None
    blocks: int
    reused_blocks: int
    seconds: float
    peak_rss_kib: int
    pixel_size: float | None
    extra: dict[str, Path] = field(default_factory=dict)
    #: True when ``resume`` found the slide's labels made with the same settings.
    skipped: bool = False


@dataclass
class SlideBatch:
    """The outcome of :func:`predict_slides`."""

    out: Path
    slides: list[SlideResult] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no slide failed."""
        return not self.failures

    def summary(self) -> str:
        """One line for the end of a command."""
        total = len(self.slides) + len(self.skipped) + len(self.failures)
        line = f"Predicted {len(self.slides)} of {total} slide(s) into {self.out}"
        if self.skipped:
            line += f" ({len(self.skipped)} already done)"
        if self.failures:
            line += "; failed: " + "; ".join(f.error for f in self.failures[:3])
        return line + "."


def slide_stem(path: str | os.PathLike) -> str:
    """``a/b.ome.zarr`` -> ``b`` (also ``.zarr``, ``.ome.tif``, ``.ome.tiff``)."""
    name = Path(str(path).rstrip("/")).name
    for suffix in (".ome.zarr", ".zarr", *OME_TIFF_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def overview_bounds(slide: Slide, predictor: Predictor) -> list[tuple[float, float]]:
    """Normalisation bounds of the whole slide from at most :data:`OVERVIEW_PIXELS` pixels:
    a coarser pyramid level when it is small enough, else every ``s``-th row and column."""
    if slide.levels > 1:
        for level in range(1, slide.levels):
            coarse = open_slide(slide.path, level)
            h, w = coarse.shape_yx
            if h * w <= OVERVIEW_PIXELS:
                return predictor.normalization_bounds(coarse.read())
    h, w = slide.shape_yx
    step = max(1, math.ceil(math.sqrt(h * w / OVERVIEW_PIXELS)))
    return predictor.normalization_bounds(slide.read((slice(0, h, step), slice(0, w, step))))


def slide_predictor(
    predictor: Predictor, slide: Slide, pixel_size: float | None, min_size: int | None = None
) -> Predictor:
    """The predictor for this slide: its pixel size, ``min_size`` (pixels of the slide; None
    keeps the run's, scaled to the slide's pixel size) and its whole-slide normalisation.

    Raises:
        DataError: the run records a training pixel size and the slide has none (and no
            ``pixel_size`` was given).
    """
    size = slide.pixel_size or pixel_size
    if size is None and predictor.pixel_size is not None:
        raise DataError(
            f"{slide.path}: has no physical pixel size in its metadata and the run was trained "
            f"at {predictor.pixel_size} µm per pixel; pass --pixel-size UM."
        )
    scaled = predictor.at_pixel_size(size)
    if min_size is not None:
        scaled = scaled.with_options(instances={"min_size": min_size})
    return scaled.with_normalization(overview_bounds(slide, scaled))


# The steps read in order: plan, resume record, run, commit; splitting them hides the flow.
def predict_slide(
    predictor: Predictor,
    path: str | os.PathLike,
    root: str | os.PathLike,
    *,
    block: int = 1024,
    margin: int = 128,
    context: int = 64,
    client: Any = None,
    workers: int = 1,
    pixel_size: float | None = None,
    min_size: int | None = None,
    mask_only: bool = False,
    resume: bool = False,
    save_prob: bool = False,
    on_block: Callable[[int, int], None] | None = None,
) -> SlideResult:
    """Predict one slide into ``root/labels/cells`` (``root`` may be the input OME-Zarr).

    Args:
        predictor: the run's predictor (tiling, threshold, TTA, instance step).
        path: an OME-Zarr folder or OME-TIFF file.
        root: the Zarr that receives the labels (created if missing).
        block, margin, context: core side, labelling margin (wider than the largest cell)
            and extra network context, in pixels.
        client, workers: a Dask client from :func:`~celltune.inference.parallel.dask_client`,
            or None with ``workers`` threads (1: this process).
        pixel_size: µm per pixel when the slide's metadata has none.
        min_size: smallest cell kept, in the slide's pixels (None: the run's, scaled).
        mask_only: write ``root/labels/mask`` (uint8, 1 = foreground) and no cells.
        resume: keep the blocks a previous, interrupted call finished with the same plan
            and settings (threshold, TTA, instance step, ...; otherwise all are redone); a
            finished slide is returned as it is (``skipped``) when its labels record the same
            settings, and refused (RunError) when not.
        save_prob: also write ``root/probability`` (uint8).
        on_block: called with (blocks done, blocks in all) as blocks finish.
    """
    start = time.perf_counter()
    slide = open_slide(path)
    ready = slide_predictor(predictor, slide, pixel_size, min_size)
    plan = plan_blocks(slide.shape_yx, block, margin, context)
    size = slide.pixel_size or pixel_size
    name, dtype = (MASK_NAME, np.uint8) if mask_only else (LABEL_NAME, plan.label_dtype())
    key = fingerprint(plan, ready, output=name)
    final = Path(root) / "labels" / name
    if resume and final.exists():
        _check_settings(final, key)
        total = len(plan.blocks())
        return SlideResult(Path(path), final, None, total, total, time.perf_counter() - start,
                           0, size, skipped=True)
    writer = create_ngff_labels(root, name, slide.shape_yx, pixel_size=size, chunks=block,
                                dtype=dtype, resume=resume)
    prob_path = None
    if save_prob:
        prob_path = Path(root) / "probability"
        if not (resume and (prob_path / "0").exists()):
            create_ome_zarr(prob_path, slide.shape_yx, np.uint8, pixel_size=size,
                            chunks=(block, block), version=writer.version)
    record = read_record(writer, key) if resume else {}
    done = set(record.get("done", []))
    todo = [b for b in plan.blocks() if b.index not in done]
    job = BlockJob(slide.source, str(writer.partial / "0"),
                   None if prob_path is None else str(prob_path / "0"), plan,
                   threads=1 if client is not None else 0, mask_only=mask_only)
    total, reused = len(plan.blocks()), len(done)
    results: list[dict[str, int]] = []
    saved = [time.monotonic()]

    def finished(result: dict[str, int]) -> None:
        results.append(result)
        done.add(result["index"])
        if time.monotonic() - saved[0] > _SAVE_EVERY:
            write_done(writer, key, done)
            saved[0] = time.monotonic()
        if on_block is not None:
            on_block(len(done), total)

    if on_block is not None:
        on_block(len(done), total)
    try:
        run_blocks(ready, job, todo, client=client, workers=workers, on_result=finished)
    finally:
        write_done(writer, key, done)
    cells: int | None = None
    if not mask_only and ready.min_fraction > 0:
        cells = _drop_relative(writer, key, done, plan, ready.min_fraction, record)
    elif not mask_only:
        cells = (_count_cells(writer.open_array("r"), plan) if reused
                 else sum(r["cells"] for r in results))
    (writer.partial / DONE_FILE).unlink(missing_ok=True)
    _record_settings(writer.partial, key)
    labels = writer.commit()
    return SlideResult(
        Path(path), labels, cells, total, reused, time.perf_counter() - start,
        max((r["peak_rss_kib"] for r in results), default=0), size,
    )


def _settings(key: dict[str, Any]) -> dict[str, Any]:
    """What a finished slide's labels depend on: the key without the block plan."""
    return {k: v for k, v in key.items() if k != "plan"}


def _record_settings(group: Path, key: dict[str, Any]) -> None:
    import zarr

    zarr.open_group(store=str(group), mode="a").attrs["celltune"] = {"settings": _settings(key)}


def _check_settings(labels: Path, key: dict[str, Any]) -> None:
    """Refuse to keep finished labels that another threshold, TTA or instance step made."""
    import zarr

    recorded = dict(zarr.open_group(store=str(labels), mode="r").attrs).get("celltune", {})
    if recorded.get("settings") != _settings(key):
        why = "other settings" if recorded else "settings it did not record"
        raise RunError(f"{labels}: exists, made with {why} (threshold, TTA, instance step, "
                       "size filter); pass --overwrite to redo it with these.")


def _drop_relative(writer: Any, key: dict[str, Any], done: set[int], plan: Any,
                   fraction: float, record: dict[str, Any]) -> int:
    """Remove the cells under ``fraction`` of the slide's typical cell area, as
    :meth:`Predictor.label` does on one image; returns the cells left. The threshold is
    recorded before any cell goes, so a resumed call removes by the same one."""
    array = writer.open_array("r+")
    ids, areas = cell_areas(array, plan)
    min_area = record.get("min_area")
    if min_area is None:
        min_area = relative_min_size(areas, fraction)
        write_done(writer, key, done, min_area=min_area)
    small = areas < min_area
    drop_cells(array, plan, ids[small])
    return int(np.count_nonzero(~small))


def _count_cells(array: Any, plan: Any) -> int:
    """Distinct ids in a label array, read block by block (after a resume)."""
    ids: set[int] = set()
    for b in plan.blocks():
        y0, y1, x0, x1 = b.core
        ids.update(int(v) for v in np.unique(array[y0:y1, x0:x1]))
    ids.discard(0)
    return len(ids)


def write_labels_tiff(labels: Any, path: Path, pixel_size: float | None, tile: int = 512) -> Path:
    """Copy a label array to a tiled OME-TIFF, one row of tiles in memory at a time."""
    import tifffile

    from celltune.io import atomic_path

    h, w = labels.shape

    def tiles():
        for y in range(0, h, tile):
            row = np.asarray(labels[y : y + tile, :])
            for x in range(0, w, tile):
                out = np.zeros((tile, tile), dtype=row.dtype)
                part = row[:, x : x + tile]
                out[: part.shape[0], : part.shape[1]] = part
                yield out

    meta: dict[str, Any] = {"axes": "YX"}
    if pixel_size:
        meta.update(PhysicalSizeX=pixel_size, PhysicalSizeY=pixel_size)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, tiles(), shape=(h, w), dtype=labels.dtype, tile=(tile, tile),
                         ome=True, metadata=meta, compression="zlib")
    return path


def _check_instances(instances: str | None) -> None:
    if instances is not None and instances not in INSTANCE_CHOICES:
        raise ConfigError(f"--instances {instances!r} is unknown; valid values are: "
                          f"{', '.join(INSTANCE_CHOICES)}.")


def _outputs(path: Path, out: Path, in_place: bool) -> Path:
    if in_place:
        if not is_zarr_path(path):
            raise DataError(f"{path}: --in-place needs an OME-Zarr input; this is a TIFF.")
        return path
    return out / f"{slide_stem(path)}.zarr"


# A batch loop with its skip / fail / progress bookkeeping in one place.
def predict_slides(
    run_or_predictor: str | os.PathLike | Predictor,
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    in_place: bool = False,
    workers: int = 1,
    scheduler: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    device: str | None = None,
    checkpoint: str = "best",
    tile: int | None = None,
    overlap: float | None = None,
    batch_size: int | None = None,
    tta: bool | None = None,
    threshold: float | None = None,
    instances: str | None = None,
    min_size: int | None = None,
    geojson: bool = False,
    cells_csv: bool = False,
    on_block: Callable[[str, int, int], None] | None = None,
    on_cells: Callable[[str, int, int], None] | None = None,
    **options: Any,
) -> SlideBatch:
    """Predict every slide in ``inputs``; one failing slide does not stop the others.

    ``tile``, ``overlap``, ``batch_size``, ``tta``, ``threshold``, ``instances``
    (``"watershed"``, ``"components"``, or ``"none"``: only ``labels/mask``) and ``min_size``
    (pixels of the slide) override the run's settings, as
    :func:`~celltune.inference.batch.predict_files` does for ordinary files; None keeps them.
    ``geojson`` and ``cells_csv`` write ``out/<stem>_cells.geojson`` and
    ``out/<stem>_cells.csv`` from the finished labels (also for a slide ``resume`` skips,
    when they are missing); ``on_cells(name, cores done, cores)`` reports their progress.
    ``options`` go to :func:`predict_slide` (block, margin, context, pixel_size, save_prob).
    A slide whose labels exist is skipped with ``resume`` when they were made with the same
    settings (a failure naming ``--overwrite`` when not), replaced with ``overwrite``, and a
    failure otherwise. ``on_block(name, done, total)`` reports progress.

    Raises:
        ConfigError: an override is invalid (unknown ``instances``, threshold outside [0, 1],
            negative ``min_size``, ``geojson`` or ``cells_csv`` with ``instances="none"``).
    """
    _check_instances(instances)
    check_cell_tables(instances, geojson, cells_csv)
    kinds = [k for k, on in (("geojson", geojson), ("csv", cells_csv)) if on]
    if min_size is not None and min_size < 0:
        raise ConfigError(f"--min-size must be >= 0 pixels, got {min_size}.")
    predictor = (run_or_predictor if isinstance(run_or_predictor, Predictor)
                 else Predictor.from_run(run_or_predictor, checkpoint=checkpoint, device=device))
    method = None if instances == "none" else instances
    predictor = predictor.with_options(tile=tile, overlap=overlap, batch_size=batch_size,
                                       tta=tta, threshold=threshold,
                                       instances={"method": method})
    mask_only = instances == "none"
    name = MASK_NAME if mask_only else LABEL_NAME
    out = Path(out)
    batch = SlideBatch(out)
    with dask_client(workers, scheduler) as client:
        for item in inputs:
            path = Path(item)
            try:
                if not is_slide(path):
                    raise DataError(f"{path}: not an OME-Zarr folder (*.zarr) or OME-TIFF "
                                    "(*.ome.tif); use celltune predict without slides for it.")
                root = _outputs(path, out, in_place)
                tables = {k: out / f"{slide_stem(path)}{OUTPUT_ENDINGS[k]}" for k in kinds}
                for existing in [root / "labels" / name, *tables.values()]:
                    if existing.exists() and not (resume or overwrite):
                        raise RunError(f"{existing}: exists; pass --overwrite to replace it "
                                       "or --resume to skip it.")
                out.mkdir(parents=True, exist_ok=True)
                report = None if on_block is None else (
                    lambda d, t, name=path.name: on_block(name, d, t))
                result = predict_slide(predictor, path, root, client=client, workers=workers,
                                       min_size=min_size, mask_only=mask_only, resume=resume,
                                       on_block=report, **options)
                if result.skipped:
                    missing = {k: f for k, f in tables.items() if not f.exists()}
                    _write_tables(predictor, path, result.labels, missing, options, on_cells)
                    batch.skipped.append(path)
                    continue
                if not is_zarr_path(path):
                    ending = "_mask" if mask_only else "_labels"
                    tif = out / f"{slide_stem(path)}{ending}.ome.tif"
                    result.extra["tiff"] = write_labels_tiff(
                        _open_labels(result.labels), tif, result.pixel_size)
                result.extra.update(
                    _write_tables(predictor, path, result.labels, tables, options, on_cells))
                batch.slides.append(result)
            except CelltuneError as exc:
                batch.failures.append(Failure(str(path), str(exc)))
    return batch


def _write_tables(predictor: Predictor, path: Path, labels: Path, tables: dict[str, Path],
                  options: dict[str, Any],
                  on_cells: Callable[[str, int, int], None] | None) -> dict[str, Path]:
    """``<stem>_cells.geojson`` / ``.csv`` of a finished slide (``tables``: kind -> path)."""
    if not tables:
        return {}
    from celltune.inference.slide_cells import write_slide_cells

    slide = open_slide(path)
    plan = plan_blocks(slide.shape_yx, options.get("block", 1024), 0, 0)
    source = json.dumps({**predictor.source, "image": str(path.resolve())}, sort_keys=True)
    report = None if on_cells is None else (lambda d, t: on_cells(path.name, d, t))
    written = write_slide_cells(_open_labels(labels), plan, slide.source, source=source,
                                geojson=tables.get("geojson"), csv_path=tables.get("csv"),
                                on_block=report)
    return written.files


def _open_labels(group: Path) -> Any:
    import zarr

    return zarr.open_array(store=str(group / "0"), mode="r")
