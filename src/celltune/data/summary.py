"""What is in a dataset root: counts, formats, sizes, what each filter keeps, label statistics.

Image headers are read without decoding pixels (:func:`celltune.io.read_header`), so a
summary of the full NeurIPS set is quick; label files are decoded for cell counts unless
``read_pixels=False``. A file that cannot be read is listed and the summary goes on.

With pixels, the summary also holds the fingerprint of the images ``celltune train --data
ROOT`` would train and validate on (every paired image, test images excluded, seed 0) and
the settings training would derive from it.

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

from celltune.config import DataConfig
from celltune.data.derive import Choice, data_filter, derive_all
from celltune.data.fingerprint import Fingerprint, compute_fingerprint
from celltune.data.neurips import FILTERS, Discovery, apply_filter, discover, training_images
from celltune.data.samples import Sample
from celltune.errors import CelltuneError
from celltune.io import ImageHeader, read_header, read_label

_BINCOUNT_LIMIT = 1 << 20


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
    """A dataset root at a glance; :meth:`to_dict` for JSON.

    Tables for people are drawn by :mod:`celltune.report`.
    """

    root: Path
    layout: str
    splits: list[SplitSummary]
    unpaired_images: list[Path]
    unpaired_labels: list[Path]
    unreadable: list[tuple[Path, str]]
    fingerprint: Fingerprint | None = None
    derived: dict[str, Choice] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable view (paths as strings, dict keys as strings)."""
        return {
            "root": str(self.root),
            "layout": self.layout,
            "splits": [_split_dict(s) for s in self.splits],
            "unpaired_images": [str(p) for p in self.unpaired_images],
            "unpaired_labels": [str(p) for p in self.unpaired_labels],
            "unreadable": [{"path": str(p), "problem": why} for p, why in self.unreadable],
            "fingerprint": None if self.fingerprint is None else self.fingerprint.to_dict(),
            "derived": {k: {"value": c.value, "reason": c.reason} for k, c in self.derived.items()},
        }


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
    fingerprint = _training_fingerprint(found.root) if read_pixels else None
    return DatasetSummary(
        root=found.root,
        layout=found.layout,
        splits=splits,
        unpaired_images=found.unpaired_images,
        unpaired_labels=found.unpaired_labels,
        unreadable=unreadable,
        fingerprint=fingerprint,
        derived={} if fingerprint is None else derive_all(fingerprint),
    )


def _training_fingerprint(root: Path) -> Fingerprint | None:
    """Fingerprint of what ``celltune train --data root`` trains and validates on, if any."""
    try:
        images = training_images(DataConfig(root=root, filter=data_filter().value), seed=0)
    except CelltuneError:
        return None  # no training images: the tables above already say why
    return compute_fingerprint(images)


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
