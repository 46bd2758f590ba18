"""Predict many image files with a trained run: masks, probabilities, instances, overlays, counts.

Inputs may be files, folders (their image files, not recursive) or glob patterns (``**``
recurses). For every readable image ``<stem>`` the output folder receives:

* ``<stem>_mask.tif``: uint8, 0 = background, 255 = foreground (probability >= threshold);
* ``<stem>_prob.tif``: float32 foreground probability in [0, 1] (only with ``save_prob``);
* ``<stem>_labels.tif``: int32 instance labels, 0 = background (unless ``instances="none"``;
  a ``boundary`` head's ``watershed`` labels come from its interior and boundary classes, a
  ``distance`` head's from its foreground and distance map);
* ``<stem>_overlay.png``: the image (percentile-normalised, RGB) with cell outlines in red,
  shrunk by an integer factor so its longer side is at most 2048 pixels;
* ``<stem>_cells.csv`` (only with ``cells_csv``): one row per cell with its area, centroid,
  mean intensity of the image as read, eccentricity, perimeter and axis lengths, in pixels
  (:mod:`celltune.inference.measurements`);
* ``<stem>_cells.geojson`` (only with ``geojson``): every cell's outline as a QuPath-ready
  GeoJSON Feature (pixel coordinates, origin at the image's top-left corner) carrying the same
  measurements (:mod:`celltune.integrations.geojson`);

and once per call ``counts.csv`` (one row per image), ``predict_args.json`` (the call's
arguments and the predictor's settings) and, when something failed, ``failures.csv``. A file
that cannot be read or predicted is reported and skipped; the others continue.

With ``workers`` > 1 or a Dask ``scheduler`` the files fan out over the same Dask client as
slide blocks (:func:`~celltune.inference.parallel.dask_client`): the predictor is sent once
to each worker, which predicts whole files and writes their outputs itself (atomically, the
same names as one process writes); this process gathers the counts, failures and progress.
``resume`` skips the files whose outputs are all there and listed in ``counts.csv``.

Example:
    >>> result = predict_files("runs/unet", ["images/", "more/*.png"], "predictions")  # doctest: +SKIP
    >>> result.ok, len(result.images)                                                # doctest: +SKIP
    (True, 12)
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from celltune import __version__
from celltune.errors import CelltuneError, ConfigError, DataError, OutputError, RunError
from celltune.inference.files import (
    Failure,
    assign_names,
    collect_inputs,
    label_in_bands,
    overlay_outlines,
    preview,
)
from celltune.inference.instances import remove_relative
from celltune.inference.measurements import measure_cells, measurement_columns, measurements_csv
from celltune.inference.parallel import dask_client, fan_out
from celltune.inference.predict import Predictor
from celltune.integrations.geojson import write_geojson
from celltune.io import read_image, write_png, write_text, write_tiff

INSTANCE_METHODS = ("watershed", "components", "none")
COUNTS_FILE = "counts.csv"
ARGS_FILE = "predict_args.json"
FAILURES_FILE = "failures.csv"
COUNT_COLUMNS = (
    "image",
    "path",
    "cells",
    "foreground_fraction",
    "mean_cell_area",
    "height",
    "width",
    "seconds",
)
#: File name ending per output kind: ``<stem><ending>``.
OUTPUT_ENDINGS = {
    "mask": "_mask.tif",
    "prob": "_prob.tif",
    "labels": "_labels.tif",
    "overlay": "_overlay.png",
    "csv": "_cells.csv",
    "geojson": "_cells.geojson",
}


def check_cell_tables(instances: str | None, geojson: bool, cells_csv: bool) -> None:
    """Refuse per-cell tables (``--geojson``, ``--csv``) when ``--instances none`` labels no
    cells (ordinary files and slides alike).

    Raises:
        ConfigError: a table was asked for without instances (names both flags' ways out).
    """
    flags = [f for f, on in (("--geojson", geojson), ("--csv", cells_csv)) if on]
    if flags and instances == "none":
        named = " and ".join(flags)
        raise ConfigError(
            f"{named} {'needs' if len(flags) == 1 else 'need'} cell instances, but "
            f"--instances none labels no cells; use --instances watershed or components, "
            f"or drop {named}."
        )


@dataclass
class ImageResult:
    """What one image produced: output paths and its counts (cells is None without instances)."""

    path: Path
    name: str
    outputs: dict[str, Path]
    height: int
    width: int
    foreground_fraction: float
    cells: int | None
    mean_cell_area: float | None
    seconds: float

    def row(self) -> dict[str, Any]:
        """This image's line of ``counts.csv``."""
        return {
            "image": self.name,
            "path": str(self.path),
            "cells": "" if self.cells is None else self.cells,
            "foreground_fraction": f"{self.foreground_fraction:.6f}",
            "mean_cell_area": "" if self.mean_cell_area is None else f"{self.mean_cell_area:.2f}",
            "height": self.height,
            "width": self.width,
            "seconds": f"{self.seconds:.3f}",
        }

    @classmethod
    def from_row(cls, row: dict[str, str], outputs: dict[str, Path]) -> ImageResult:
        """An image of an earlier call, from its line of ``counts.csv`` (for ``resume``)."""
        return cls(
            path=Path(row["path"]),
            name=row["image"],
            outputs=outputs,
            height=int(row["height"]),
            width=int(row["width"]),
            foreground_fraction=float(row["foreground_fraction"]),
            cells=int(row["cells"]) if row["cells"] else None,
            mean_cell_area=float(row["mean_cell_area"]) if row["mean_cell_area"] else None,
            seconds=float(row["seconds"]),
        )


@dataclass
class BatchResult:
    """The outcome of :func:`predict_files`."""

    out: Path
    images: list[ImageResult] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    #: Images whose outputs an earlier call left complete (``resume``; also in ``images``).
    skipped: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every input was predicted."""
        return not self.failures

    def summary(self) -> str:
        """One line for the end of a command."""
        total = len(self.images) + len(self.failures)
        line = f"Predicted {len(self.images)} of {total} image(s) into {self.out}"
        if self.skipped:
            line += f" ({len(self.skipped)} already done)"
        if self.failures:
            names = ", ".join(Path(f.path).name for f in self.failures[:3])
            more = ", ..." if len(self.failures) > 3 else ""
            return f"{line}; {len(self.failures)} failed: {names}{more}."
        return f"{line}."


@dataclass(frozen=True)
class OutputOptions:
    """Which files to write per image, and how to label instances."""

    instances: str | None = None
    min_size: int | None = None
    save_prob: bool = False
    overlay: bool = True
    geojson: bool = False
    cells_csv: bool = False

    def __post_init__(self) -> None:
        if self.instances is not None and self.instances not in INSTANCE_METHODS:
            raise ConfigError(
                f"--instances {self.instances!r} is unknown; valid values are: "
                f"{', '.join(INSTANCE_METHODS)}."
            )
        if self.min_size is not None and self.min_size < 0:
            raise ConfigError(f"--min-size must be >= 0 pixels, got {self.min_size}.")
        check_cell_tables(self.instances, self.geojson, self.cells_csv)

    @property
    def measures(self) -> bool:
        """True when per-cell measurements are written (``<stem>_cells.csv`` or ``.geojson``)."""
        return self.geojson or self.cells_csv

    def instance_overrides(self) -> dict[str, Any]:
        """What the user chose over the run's tuned instance step."""
        method = self.instances if self.instances != "none" else None
        return {"method": method, "min_size": self.min_size}

    def files(self, out: Path, name: str) -> dict[str, Path]:
        """Output path per kind of file written for one image (keys of ``OUTPUT_ENDINGS``)."""
        kinds = ["mask"]
        kinds += ["prob"] if self.save_prob else []
        kinds += ["labels"] if self.instances != "none" else []
        kinds += ["overlay"] if self.overlay else []
        kinds += ["csv"] if self.cells_csv else []
        kinds += ["geojson"] if self.geojson else []
        return {k: out / f"{name}{OUTPUT_ENDINGS[k]}" for k in kinds}


def predict_files(
    run_or_predictor: str | os.PathLike | Predictor,
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    instances: str | None = None,
    min_size: int | None = None,
    save_prob: bool = False,
    overlay: bool = True,
    geojson: bool = False,
    cells_csv: bool = False,
    overwrite: bool = False,
    tile: int | None = None,
    overlap: float | None = None,
    batch_size: int | None = None,
    tta: bool | None = None,
    threshold: float | None = None,
    device: str | None = None,
    checkpoint: str = "best",
    progress: bool = True,
    console: Any = None,
    workers: int = 1,
    scheduler: str | None = None,
    resume: bool = False,
) -> BatchResult:
    """Predict every image in ``inputs`` and write masks, labels, overlays and ``counts.csv``.

    Args:
        run_or_predictor: A run folder or a ready :class:`Predictor`.
        inputs: Image files, folders and glob patterns.
        out: Output folder (created if missing).
        instances: ``"watershed"``, ``"components"`` or ``"none"`` (no labels, no counts);
            None keeps the run's tuned instance step (``postprocess.json``).
        min_size: Smallest cell kept, in pixels; None keeps the run's.
        save_prob: Also write the float32 probability map.
        overlay: Write the PNG overlay.
        geojson: Write ``<stem>_cells.geojson`` (cell outlines and measurements for QuPath).
        cells_csv: Write ``<stem>_cells.csv`` (per-cell measurements).
        overwrite: Replace existing outputs; otherwise refuse before predicting anything.
        tile, overlap, batch_size, tta, threshold: Override the run's settings (None keeps them).
        device: ``"cpu"``, ``"cuda"``, ``"auto"`` (only when a run folder is given).
        checkpoint: Which checkpoint of the run (``"best"`` or ``"last"``).
        progress: Show progress bars over images and tiles (over images only in parallel).
        console: A ``rich.console.Console`` for messages (default: a new one).
        workers: Files predicted at once, each by a process of a local Dask cluster
            (threads without dask's ``distributed``); 1 predicts them here, one by one.
        scheduler: Address of a running Dask scheduler (``tcp://host:8786``) whose workers
            predict the files; they must read the inputs and write ``out`` at these paths.
        resume: Skip the images whose outputs an earlier call with the same settings left
            complete (all their files, and their line in ``counts.csv``); redo the others.

    Returns:
        A :class:`BatchResult`; inputs that failed are listed there and in ``failures.csv``.

    Raises:
        RunError: Outputs already exist and neither ``overwrite`` nor ``resume`` is given, or
            ``resume`` finds outputs of other settings, or the run is unusable.
        DataError: No image file was found in ``inputs``.
        ConfigError: An option is invalid (e.g. ``geojson`` or ``cells_csv`` without
            instances).
    """
    options = OutputOptions(instances, min_size, save_prob, overlay, geojson, cells_csv)
    predictor = _predictor(run_or_predictor, device=device, checkpoint=checkpoint).with_options(
        tile=tile, overlap=overlap, batch_size=batch_size, tta=tta, threshold=threshold,
        instances=options.instance_overrides(),
    )
    out = Path(out)
    paths, failures = collect_inputs(inputs)
    named, clashes = assign_names(paths)
    failures += clashes
    if not named:
        raise DataError(
            f"No image files found in {', '.join(map(str, inputs)) or 'the inputs'}; give "
            "image files, folders or glob patterns."
        )
    done = _resumable(out, named, options, predictor) if resume else {}
    if not resume:
        _check_outputs(out, named, options, overwrite)
    _write_args(out, predictor, inputs, named, options, overwrite)
    result = BatchResult(out, images=list(done.values()), failures=failures)
    result.skipped = [image.path for image in result.images]
    console = console or _default_console()
    for failure in failures:
        _report(console, failure)
    _predict_all(predictor, named, set(done), out, options, result, console, progress,
                 workers=workers, scheduler=scheduler)
    _write_failures(out, result.failures)
    return result


def _predict_all(
    predictor: Predictor,
    named: list[tuple[Path, str]],
    done: set[str],
    out: Path,
    options: OutputOptions,
    result: BatchResult,
    console: Any,
    progress: bool,
    *,
    workers: int,
    scheduler: str | None,
) -> None:
    """Predict the images not ``done``, here one by one or fanned out over Dask workers."""
    todo = [(path, name) for path, name in named if name not in done]
    with _progress(console, progress) as bar:
        images = bar.add_task("images", total=len(named), completed=len(done))
        if todo and (workers > 1 or scheduler):
            with dask_client(workers, scheduler) as client:
                _predict_many(predictor, todo, named, out, options, result, client, workers,
                              lambda: bar.advance(images), console)
        else:
            for path, name in todo:
                _predict_one(predictor, path, name, out, options, result, bar, console)
                bar.advance(images)
    if done:  # the resumed images came first: counts.csv back in input order
        order = {name: i for i, (_, name) in enumerate(named)}
        result.images.sort(key=lambda image: order[image.name])
        _write_counts(out, result.images)


@dataclass(frozen=True)
class FileJob:
    """What a worker needs besides the predictor to predict a file (picklable)."""

    out: Path
    options: OutputOptions
    threads: int = 0  # torch threads per worker; 0 leaves torch's default


def predict_file_job(
    predictor: Predictor, job: FileJob, item: tuple[Path, str]
) -> ImageResult | Failure:
    """Predict one ``(path, name)`` on a worker: its result, or a :class:`Failure` naming the
    file (its partial outputs removed)."""
    if job.threads:
        import torch

        torch.set_num_threads(job.threads)
    path, name = item
    return _attempt(predictor, path, name, job.out, job.options)


def _predict_many(
    predictor: Predictor,
    todo: list[tuple[Path, str]],
    named: list[tuple[Path, str]],
    out: Path,
    options: OutputOptions,
    result: BatchResult,
    client: Any,
    workers: int,
    advance: Callable[[], None],
    console: Any,
) -> None:
    """Fan ``todo`` out over ``client`` (or threads); gather counts and failures in input
    order as files finish."""
    order = {name: i for i, (_, name) in enumerate(named)}
    job = FileJob(out, options, threads=1 if client is not None else 0)
    failed: list[tuple[int, Failure]] = []
    for i, outcome in fan_out(predict_file_job, predictor, job, todo, client=client,
                              workers=workers, catch=True):
        path, name = todo[i]
        if isinstance(outcome, ImageResult):
            result.images.append(outcome)
            result.images.sort(key=lambda image: order[image.name])
            _write_counts(out, result.images)
        else:
            failure = outcome if isinstance(outcome, Failure) else Failure(
                str(path), f"{path}: its worker failed ({type(outcome).__name__}: {outcome}).")
            failed.append((order[name], failure))
            _report(console, failure)
        advance()
    result.failures += [failure for _, failure in sorted(failed, key=lambda f: f[0])]


def _resumable(
    out: Path, named: list[tuple[Path, str]], options: OutputOptions, predictor: Predictor
) -> dict[str, ImageResult]:
    """Images an earlier call into ``out`` finished, by name (for ``resume``).

    Raises:
        RunError: that call used other settings, so its outputs cannot be mixed with these.
    """
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: --out must be a folder, but a file of that name exists.")
    args = out / ARGS_FILE
    if args.is_file():
        try:
            before = json.loads(args.read_text())
        except ValueError:
            before = {}
        now = _settings(predictor, options)
        changed = [k for k, v in now.items() if _comparable(before.get(k)) != _comparable(v)]
        if changed:
            raise RunError(
                f"{args}: the outputs in {out} were made with other settings "
                f"({', '.join(changed)}); --resume would mix them. Pass --overwrite instead, "
                "or choose another --out folder."
            )
    try:
        with (out / COUNTS_FILE).open(newline="") as fh:
            rows = {row["image"]: row for row in csv.DictReader(fh)}
    except (OSError, KeyError, csv.Error):
        rows = {}
    done = {}
    for path, name in named:
        files = options.files(out, name)
        row = rows.get(name)
        if row is not None and row.get("path") == str(path) and all(
                f.exists() for f in files.values()):
            done[name] = ImageResult.from_row(row, files)
    return done


def _comparable(value: Any) -> Any:
    """A settings entry without what does not change the outputs."""
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k not in ("device", "batch_size")}
    return value


def _predictor(
    source: str | os.PathLike | Predictor, *, device: str | None, checkpoint: str
) -> Predictor:
    if isinstance(source, Predictor):
        return source
    return Predictor.from_run(source, checkpoint=checkpoint, device=device)


def _check_outputs(
    out: Path, named: list[tuple[Path, str]], options: OutputOptions, overwrite: bool
) -> None:
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: --out must be a folder, but a file of that name exists.")
    if overwrite:
        return
    planned = [out / COUNTS_FILE, out / ARGS_FILE]
    planned += [p for _, name in named for p in options.files(out, name).values()]
    existing = [p for p in planned if p.exists()]
    if existing:
        raise RunError(
            f"{out}: {len(existing)} output file(s) already exist, e.g. {existing[0].name}; "
            "pass --overwrite to replace them or choose another --out folder."
        )


def _settings(predictor: Predictor, options: OutputOptions) -> dict[str, Any]:
    """The entries of ``predict_args.json`` that decide the outputs (JSON values)."""
    return json.loads(json.dumps({
        "instances": "none" if options.instances == "none" else predictor.instance_params(),
        "save_prob": options.save_prob,
        "overlay": options.overlay,
        "geojson": options.geojson,
        "cells_csv": options.cells_csv,
        "predictor": predictor.describe(),
    }, default=str))


def _write_args(
    out: Path,
    predictor: Predictor,
    inputs: Sequence[str | os.PathLike],
    named: list[tuple[Path, str]],
    options: OutputOptions,
    overwrite: bool,
) -> None:
    args = {
        "celltune_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": [str(i) for i in inputs],
        "files": [str(p) for p, _ in named],
        "out": str(out),
        **_settings(predictor, options),
        "overwrite": overwrite,
        "mask_values": {"background": 0, "foreground": 255},
    }
    write_text(out / ARGS_FILE, json.dumps(args, indent=1) + "\n")


def _predict_one(
    predictor: Predictor,
    path: Path,
    name: str,
    out: Path,
    options: OutputOptions,
    result: BatchResult,
    bar: Any,
    console: Any,
) -> None:
    tiles = bar.add_task(f"tiles {name}", total=None)
    try:
        image = _attempt(
            predictor,
            path,
            name,
            out,
            options,
            on_tile=lambda n: bar.advance(tiles, n),
            on_size=lambda h, w: bar.update(tiles, total=predictor.tile_count(h, w)),
        )
    finally:
        bar.remove_task(tiles)
    if isinstance(image, Failure):
        result.failures.append(image)
        _report(console, image)
        return
    result.images.append(image)
    _write_counts(out, result.images)


def _attempt(
    predictor: Predictor,
    path: Path,
    name: str,
    out: Path,
    options: OutputOptions,
    **progress: Any,
) -> ImageResult | Failure:
    """:func:`predict_file`, or a :class:`Failure` naming the file when it fails."""
    written: list[Path] = []
    try:
        return predict_file(predictor, path, name, out, options, written, **progress)
    except Exception as exc:  # one bad file must not stop the batch; report it and go on
        for p in written:
            p.unlink(missing_ok=True)  # no half set of outputs for a failed image
        return Failure(str(path), _reason(path, exc))


def _reason(path: Path, exc: Exception) -> str:
    if isinstance(exc, CelltuneError):
        text = str(exc)
        return text if str(path) in text else f"{path}: {text}"
    if isinstance(exc, MemoryError):
        return f"{path}: not enough memory to predict this image; try a smaller --batch-size."
    return f"{path}: prediction failed ({type(exc).__name__}: {exc})."


def predict_file(
    predictor: Predictor,
    path: Path,
    name: str,
    out: Path,
    options: OutputOptions,
    written: list[Path],
    *,
    on_tile: Callable[[int], None] | None = None,
    on_size: Callable[[int, int], None] | None = None,
) -> ImageResult:
    """Predict one file and write its outputs; every path written is appended to ``written``."""
    start = time.perf_counter()
    files = options.files(out, name)
    image = read_image(path)
    height, width = image.shape[:2]
    if on_size is not None:
        on_size(height, width)
    small = preview(image) if options.overlay else None
    prediction = predictor.predict(image, on_tile=on_tile)
    # The raw image is the largest array left: free it before labelling unless the cells'
    # mean intensities are wanted.
    kept = image if options.measures else None
    del image
    if options.save_prob:
        written.append(write_tiff(files["prob"], prediction.probability.astype(np.float32, copy=False)))
    mask, classes = prediction.mask, prediction.classes
    del prediction  # nor keep the probability plane while labelling
    written.append(write_tiff(files["mask"], mask.astype(np.uint8) * 255))
    labels, cells, mean_area = _instances(predictor, mask, classes, options)
    if labels is not None:
        written.append(write_tiff(files["labels"], labels))
        source = json.dumps({**predictor.source, "image": str(path.resolve())}, sort_keys=True)
        _write_cells(files, labels, kept, source, written)
    del kept
    if small is not None:
        shown = labels if labels is not None else mask
        written.append(write_png(files["overlay"], overlay_outlines(small, shown)))
    return ImageResult(
        path=path,
        name=name,
        outputs=files,
        height=height,
        width=width,
        foreground_fraction=float(mask.mean()),
        cells=cells,
        mean_cell_area=mean_area,
        seconds=time.perf_counter() - start,
    )


def _write_cells(
    files: dict[str, Path],
    labels: np.ndarray,
    image: np.ndarray | None,
    source: str,
    written: list[Path],
) -> None:
    """``<stem>_cells.csv`` and ``<stem>_cells.geojson``, from the same measurements."""
    if image is None:
        return
    rows = measure_cells(labels, image)
    if "csv" in files:
        columns = measurement_columns(image.shape[-1])
        written.append(write_text(files["csv"], measurements_csv(rows, columns)))
    if "geojson" in files:
        written.append(write_geojson(files["geojson"], labels, rows, source=source))


def _instances(
    predictor: Predictor, mask: np.ndarray, classes: np.ndarray | None, options: OutputOptions
) -> tuple[np.ndarray | None, int | None, float | None]:
    """Labels, cell count and mean cell area with the predictor's instance step (its
    relative size filter included, as :meth:`Predictor.label` applies it); the boundary and
    distance heads decode their own classes."""
    if options.instances == "none":
        return None, None, None
    if classes is not None and predictor.instance_method == "watershed":
        labels = predictor.label(mask, classes)
    else:
        labels = remove_relative(
            label_in_bands(mask, predictor.instance_method, predictor.min_size, h=predictor.h),
            predictor.min_fraction)
    cells = int(labels.max())
    mean_area = float(np.count_nonzero(labels)) / cells if cells else None
    return labels, cells, mean_area


def _write_counts(out: Path, images: list[ImageResult]) -> None:
    # Rewritten after every image so an interrupted batch still leaves its counts.
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COUNT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(image.row() for image in images)
    write_text(out / COUNTS_FILE, buffer.getvalue())


def _write_failures(out: Path, failures: list[Failure]) -> None:
    path = out / FAILURES_FILE
    if not failures:
        path.unlink(missing_ok=True)  # a stale list from an earlier call would mislead
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "error"])
    writer.writerows([f.path, f.error] for f in failures)
    write_text(path, buffer.getvalue())


def _default_console() -> Any:
    return Console(stderr=True)


def _report(console: Any, failure: Failure) -> None:
    console.print(f"[bold red]skipped:[/] {escape(failure.error)}", soft_wrap=True)


class _NoProgress:
    """The subset of rich's Progress used here, doing nothing (progress=False)."""

    def add_task(self, *_: Any, **__: Any) -> int:
        return 0

    def advance(self, *_: Any) -> None:
        pass

    def update(self, *_: Any, **__: Any) -> None:
        pass

    def remove_task(self, *_: Any) -> None:
        pass


@contextmanager
def _progress(console: Any, enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield _NoProgress()
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        yield bar
