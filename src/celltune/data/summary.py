"""What is in a dataset root: counts, formats, sizes, what each filter keeps, label statistics.

Image headers are read without decoding pixels (tifffile page shapes, PIL size and mode), so
a summary of the full NeurIPS set is quick; label files are decoded for cell counts unless
``read_pixels=False``. A file that cannot be read is listed and the summary goes on.

Example:
    >>> s = summarize("../shared/data/neurips_junma")          # doctest: +SKIP
    >>> s.splits[0].images, s.splits[0].filters["study"].kept  # doctest: +SKIP
    (3, 1)
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from celltune.data.neurips import FILTERS, Discovery, apply_filter, discover
from celltune.data.samples import Sample
from celltune.errors import CelltuneError
from celltune.io import TIFF_EXTENSIONS, quiet_tifffile, read_label

# PIL mode -> (numpy dtype name, channels in the file).
_PIL_MODES: dict[str, tuple[str, int]] = {
    "1": ("bool", 1),
    "L": ("uint8", 1),
    "P": ("uint8", 3),  # palette images are read as RGB
    "LA": ("uint8", 2),
    "RGB": ("uint8", 3),
    "RGBA": ("uint8", 4),
    "CMYK": ("uint8", 4),
    "YCbCr": ("uint8", 3),
    "I": ("int32", 1),
    "I;16": ("uint16", 1),
    "I;16B": ("uint16", 1),
    "I;16L": ("uint16", 1),
    "F": ("float32", 1),
}
_MAX_CHANNELS = 4
_CHANNEL_NAMES = {1: "gray", 3: "rgb", 4: "rgba"}
_BINCOUNT_LIMIT = 1 << 20
_SHOW = 10  # files listed per problem table before "... and N more"


@dataclass(frozen=True)
class ImageHeader:
    """Shape and type of an image file, read without decoding its pixels."""

    height: int
    width: int
    channels: int
    dtype: str


@dataclass
class FilterCount:
    """How many images a filter keeps, and why it drops the others."""

    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)


@dataclass
class LabelStats:
    """Cells per image and foreground fraction over the label files that could be read."""

    read: int
    cells_min: int
    cells_median: float
    cells_max: int
    foreground_mean: float


@dataclass
class SplitSummary:
    """Everything counted for one split folder (paired images only)."""

    name: str
    folder: Path
    images: int
    extensions: dict[str, int]
    dtypes: dict[str, int]
    channels: dict[int, int]
    height: tuple[int, int] | None
    width: tuple[int, int] | None
    filters: dict[str, FilterCount]
    labels: LabelStats | None


@dataclass
class DatasetSummary:
    """A dataset root at a glance; :meth:`to_dict` for JSON, :meth:`render` for people."""

    root: Path
    layout: str
    splits: list[SplitSummary]
    unpaired_images: list[Path]
    unpaired_labels: list[Path]
    unreadable: list[tuple[Path, str]]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable view (paths as strings, dict keys as strings)."""
        return {
            "root": str(self.root),
            "layout": self.layout,
            "splits": [_split_dict(s) for s in self.splits],
            "unpaired_images": [str(p) for p in self.unpaired_images],
            "unpaired_labels": [str(p) for p in self.unpaired_labels],
            "unreadable": [{"path": str(p), "problem": why} for p, why in self.unreadable],
        }

    def render(self, console: Any) -> None:
        """Print rich tables to ``console`` (a :class:`rich.console.Console`)."""
        for table in (_overview_table(self), _filter_table(self), _label_table(self)):
            console.print(table)
        problems = _problem_table(self)
        if problems.row_count:
            console.print(problems)
        else:
            console.print("No unpaired or unreadable files.")


def _split_dict(s: SplitSummary) -> dict[str, Any]:
    return {
        "name": s.name,
        "folder": str(s.folder),
        "images": s.images,
        "extensions": s.extensions,
        "dtypes": s.dtypes,
        "channels": {str(k): v for k, v in s.channels.items()},
        "height": None if s.height is None else list(s.height),
        "width": None if s.width is None else list(s.width),
        "filters": {k: {"kept": f.kept, "dropped": f.dropped} for k, f in s.filters.items()},
        "labels": None if s.labels is None else vars(s.labels).copy(),
    }


# --- headers -----------------------------------------------------------------------------


def _hwc(shape: tuple[int, ...]) -> tuple[int, int, int] | None:
    """(H, W, C) of a raw array shape by io.read_image's rules; None for stacks/volumes."""
    dims = tuple(d for d in shape if d != 1) if len(shape) > 2 else tuple(shape)
    if len(dims) == 2:
        return dims[0], dims[1], 1
    if len(dims) == 3:
        first, last = dims[0], dims[-1]
        if last <= _MAX_CHANNELS and (first > _MAX_CHANNELS or first >= last):
            return dims[0], dims[1], last
        if first <= _MAX_CHANNELS:
            return dims[1], dims[2], first
    return None


def read_header(path: Path) -> ImageHeader:
    """Shape, channels and dtype of an image file without decoding its pixels.

    Raises:
        CelltuneError: the header cannot be parsed, the image is a stack, or a TIFF's pixel
            data runs past the end of the file (truncated).
    """
    if not path.is_file() or path.stat().st_size == 0:
        raise CelltuneError(f"{path}: file is missing or empty.")
    try:
        if path.suffix.lower() in TIFF_EXTENSIONS:
            shape, dtype = _tiff_header(path)
        else:
            shape, dtype = _pillow_header(path)
    except CelltuneError:
        raise
    except Exception as exc:  # decoders raise many types; the user needs the file name
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CelltuneError(f"{path}: header cannot be read ({reason}).") from exc
    hwc = _hwc(shape)
    if hwc is None:
        raise CelltuneError(f"{path}: has shape {shape}, a stack or volume, not a 2-D image.")
    return ImageHeader(hwc[0], hwc[1], hwc[2], dtype)


def _tiff_header(path: Path) -> tuple[tuple[int, ...], str]:
    import tifffile

    size = path.stat().st_size
    with quiet_tifffile(), tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise CelltuneError(f"{path}: TIFF contains no image data.")
        series = tif.series[0]
        # Strip/tile offsets are in the header: data ending past EOF means a truncated file.
        for page in series.pages:
            if page is None:
                continue
            ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=False)]
            if ends and max(ends) > size:
                raise CelltuneError(f"{path}: TIFF is truncated (pixel data ends past the file).")
        return tuple(int(d) for d in series.shape), str(series.dtype)


def _pillow_header(path: Path) -> tuple[tuple[int, ...], str]:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # whole-slide images are legitimate input (as in io)
    with Image.open(path) as im:
        width, height = im.size
        dtype, channels = _PIL_MODES.get(im.mode, (im.mode, len(im.getbands())))
        im.verify()  # checks chunk CRCs for PNG without decoding pixels
    shape = (height, width) if channels == 1 else (height, width, channels)
    return shape, dtype


# --- summary -----------------------------------------------------------------------------


def summarize(root: str | os.PathLike, *, read_pixels: bool = True) -> DatasetSummary:
    """Summarise a dataset root (any layout :func:`~celltune.data.neurips.discover` knows).

    Args:
        root: dataset root.
        read_pixels: decode label files for cells per image and foreground fraction;
            ``False`` reads image headers only.

    Raises:
        DataError: the root is missing or has no recognised layout.
    """
    found: Discovery = discover(root)
    unreadable: list[tuple[Path, str]] = []
    splits = [
        _summarize_split(role, found.folders[role], samples, read_pixels, unreadable)
        for role, samples in found.splits.items()
    ]
    return DatasetSummary(
        root=found.root,
        layout=found.layout,
        splits=splits,
        unpaired_images=found.unpaired_images,
        unpaired_labels=found.unpaired_labels,
        unreadable=unreadable,
    )


def _summarize_split(
    name: str,
    folder: Path,
    samples: list[Sample],
    read_pixels: bool,
    unreadable: list[tuple[Path, str]],
) -> SplitSummary:
    headers: dict[Sample, ImageHeader] = {}
    for sample in samples:
        try:
            headers[sample] = read_header(sample.image)
        except CelltuneError as exc:
            unreadable.append((sample.image, _reason(exc, sample.image)))
    heights = [h.height for h in headers.values()]
    widths = [h.width for h in headers.values()]
    return SplitSummary(
        name=name,
        folder=folder,
        images=len(samples),
        extensions=_counts(s.image.suffix.lower() for s in samples),
        dtypes=_counts(h.dtype for h in headers.values()),
        channels=dict(sorted(Counter(h.channels for h in headers.values()).items())),
        height=(min(heights), max(heights)) if heights else None,
        width=(min(widths), max(widths)) if widths else None,
        filters={f: _filter_count(samples, f) for f in FILTERS.names()},
        labels=_label_stats(samples, headers, unreadable) if read_pixels else None,
    )


def _counts(values: Any) -> dict[str, int]:
    return dict(sorted(Counter(values).items()))


def _reason(exc: Exception, path: Path) -> str:
    """The error sentence without the leading path (the table shows it in its own column)."""
    text = str(exc)
    prefix = f"{path}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


def _filter_count(samples: list[Sample], name: str) -> FilterCount:
    kept, dropped = apply_filter(samples, name)
    return FilterCount(len(kept), _counts(reason for _, reason in dropped))


def _count_cells(label: np.ndarray) -> int:
    # bincount is much faster than np.unique on megapixel maps, but allocates max-id slots.
    if label.size and label.max() < _BINCOUNT_LIMIT:
        return int(np.count_nonzero(np.bincount(label.ravel())[1:]))
    return int(np.count_nonzero(np.unique(label)))


def _label_stats(
    samples: list[Sample], headers: dict[Sample, ImageHeader], unreadable: list[tuple[Path, str]]
) -> LabelStats | None:
    cells: list[int] = []
    foreground: list[float] = []
    for sample in samples:
        assert sample.label is not None  # discover() only returns paired samples
        header = headers.get(sample)
        shape = None if header is None else (header.height, header.width)
        try:
            label = read_label(sample.label, shape=shape)
        except CelltuneError as exc:
            unreadable.append((sample.label, _reason(exc, sample.label)))
            continue
        cells.append(_count_cells(label))
        foreground.append(float(np.count_nonzero(label)) / max(1, label.size))
    if not cells:
        return None
    return LabelStats(
        read=len(cells),
        cells_min=min(cells),
        cells_median=float(np.median(cells)),
        cells_max=max(cells),
        foreground_mean=float(np.mean(foreground)),
    )


# --- rendering ---------------------------------------------------------------------------


def _fmt_counts(counts: dict[Any, int]) -> str:
    # One entry per line keeps the table narrow enough for an 80-column terminal.
    return "\n".join(f"{k} {v}" for k, v in counts.items()) or "-"


def _fmt_range(span: tuple[int, int] | None) -> str:
    if span is None:
        return "-"
    return str(span[0]) if span[0] == span[1] else f"{span[0]}-{span[1]}"


def _overview_table(summary: DatasetSummary) -> Any:
    from rich.table import Table

    folders = ", ".join(f"{s.name} = {_relative(s.folder, summary.root)}" for s in summary.splits)
    table = Table(
        title=f"Dataset {summary.root} ({summary.layout} layout)",
        title_justify="left",
        caption=f"folders: {folders}",
        caption_justify="left",
    )
    for column in ("split", "images", "extensions", "dtypes", "channels", "H", "W"):
        table.add_column(
            column,
            justify="right" if column == "images" else "left",
            no_wrap=column in ("split", "images", "H", "W"),
        )
    for s in summary.splits:
        table.add_row(
            s.name,
            str(s.images),
            _fmt_counts(s.extensions),
            _fmt_counts(s.dtypes),
            _fmt_counts({_CHANNEL_NAMES.get(c, f"{c}ch"): n for c, n in s.channels.items()}),
            _fmt_range(s.height),
            _fmt_range(s.width),
        )
    return table


def _filter_table(summary: DatasetSummary) -> Any:
    from rich.table import Table

    table = Table(title="Filters", title_justify="left")
    for column in ("split", "filter", "kept", "dropped"):
        table.add_column(column, justify="right" if column == "kept" else "left")
    for s in summary.splits:
        for name, count in s.filters.items():
            dropped = "\n".join(f"{n}: {why}" for why, n in count.dropped.items())
            table.add_row(s.name, name, f"{count.kept}/{s.images}", dropped or "-")
    return table


def _label_table(summary: DatasetSummary) -> Any:
    from rich.table import Table

    table = Table(title="Labels", title_justify="left")
    for column in ("split", "read", "cells min", "median", "max", "foreground (mean)"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for s in summary.splits:
        lab = s.labels
        if lab is None:
            table.add_row(s.name, "-", "-", "-", "-", "-")
            continue
        table.add_row(
            s.name,
            str(lab.read),
            str(lab.cells_min),
            f"{lab.cells_median:g}",
            str(lab.cells_max),
            f"{lab.foreground_mean:.3f}",
        )
    return table


def _problem_table(summary: DatasetSummary) -> Any:
    from rich.table import Table

    table = Table(title="Problems", title_justify="left")
    for column in ("kind", "file", "problem"):
        table.add_column(column, no_wrap=column == "kind")
    groups = (
        ("unpaired image", [(p, "no label file") for p in summary.unpaired_images]),
        ("unpaired label", [(p, "no image file") for p in summary.unpaired_labels]),
        ("unreadable", summary.unreadable),
    )
    for kind, rows in groups:
        for path, why in rows[:_SHOW]:
            table.add_row(kind, _relative(path, summary.root), why)
        if len(rows) > _SHOW:
            table.add_row(kind, f"... and {len(rows) - _SHOW} more", "")
    return table


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root)) or "."
    except ValueError:
        return str(path)
