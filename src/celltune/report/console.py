"""Rich output for the terminal: dataset summary and model tables, the download bar.

The library returns data (:class:`~celltune.data.summary.DatasetSummary`, the rows of
:func:`celltune.models.models_table`); these functions turn it into renderables that the CLI
prints with ``console.print``. :func:`download_bar` is the progress bar the CLI hands to
:func:`celltune.data.download.download_neurips`.

Example:
    >>> from rich.console import Console                                  # doctest: +SKIP
    >>> for table in data_summary_tables(summarize("data/synth")):        # doctest: +SKIP
    ...     Console().print(table)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from celltune.data.derive import DERIVED_FIELDS
from celltune.data.fingerprint import Fingerprint
from celltune.data.summary import DatasetSummary

_CHANNEL_NAMES = {1: "gray", 3: "rgb", 4: "rgba"}
_SHOW = 10  # files listed per problem table before "... and N more"
_NO_PROBLEMS = "No unpaired or unreadable files."
#: Printed under the models table by ``celltune models``.
MODELS_NOTE = (
    "Study weights are what the published study used; `celltune train` starts from "
    "--weights none unless told otherwise, so it never needs the network."
)


# --- dataset summary -----------------------------------------------------------------------


def data_summary_tables(summary: DatasetSummary) -> list[RenderableType]:
    """What ``celltune data summary`` prints, in order: overview, filters, labels, the
    fingerprint and the settings derived from it (when pixels were read), problems.

    The last item is the problems table, or a one-line :class:`~rich.text.Text` saying there
    are none.
    """
    tables: list[RenderableType] = [
        _overview_table(summary),
        _filter_table(summary),
        _label_table(summary),
    ]
    if summary.fingerprint is not None:
        tables += [_fingerprint_table(summary.fingerprint), _derived_table(summary)]
    problems = _problem_table(summary)
    tables.append(problems if problems.row_count else Text(_NO_PROBLEMS))
    return tables


def _fmt_counts(counts: Mapping[Any, int]) -> str:
    # One entry per line keeps the table narrow enough for an 80-column terminal.
    return "\n".join(f"{k} {v}" for k, v in counts.items()) or "-"


def _fmt_range(span: tuple[int, int] | None) -> str:
    if span is None:
        return "-"
    return str(span[0]) if span[0] == span[1] else f"{span[0]}-{span[1]}"


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root)) or "."
    except ValueError:
        return str(path)


def _overview_table(summary: DatasetSummary) -> Table:
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


def _filter_table(summary: DatasetSummary) -> Table:
    table = Table(title="Filters", title_justify="left")
    for column in ("split", "filter", "kept", "dropped"):
        table.add_column(column, justify="right" if column == "kept" else "left")
    for s in summary.splits:
        for name, count in s.filters.items():
            dropped = "\n".join(f"{n}: {why}" for why, n in count.dropped.items())
            table.add_row(s.name, name, f"{count.kept}/{s.images}", dropped or "-")
    return table


def _label_table(summary: DatasetSummary) -> Table:
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


def _span_text(span: tuple[int, float, int] | None) -> str:
    if span is None:
        return "-"
    return f"{span[0]}-{span[2]}, median {span[1]:g}" if span[0] != span[2] else str(span[0])


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _maybe(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _fingerprint_rows(fp: Fingerprint) -> list[tuple[str, str]]:
    channels = {_CHANNEL_NAMES.get(int(c), f"{c}ch"): n for c, n in fp.channels.items()}
    groups = "; ".join(fp.group_rules) if fp.group_rules else "every image alone"
    rows = [
        ("images", f"{fp.images} ({fp.sampled} decoded for pixels)"),
        ("height", _span_text(fp.height)),
        ("width", _span_text(fp.width)),
        ("dtypes", ", ".join(f"{k} {v}" for k, v in fp.dtypes.items()) or "-"),
        ("channels", ", ".join(f"{k} {v}" for k, v in channels.items()) or "-"),
        ("colour", f"{fp.colour_images} of {fp.sampled} images"),
        ("intensity p1/p50/p99.8", " / ".join(map(_number, fp.intensity.values())) or "-"),
        ("objects", f"{fp.objects} ({_maybe(fp.objects_per_image, 'g')} per image, median)"),
        ("object diameter", f"{_maybe(fp.object_diameter, '.1f')} px (median; area "
                            f"{_maybe(fp.object_area, 'g')} px²)"),
        ("foreground", _maybe(fp.foreground_fraction, ".3f")),
        ("touching objects", _maybe(fp.touching_share, ".0%")),
        ("groups", f"{fp.groups} ({groups})"),
    ]
    if fp.unreadable:
        rows.append(("unreadable", str(len(fp.unreadable))))
    return rows


def _fingerprint_table(fp: Fingerprint) -> Table:
    table = Table(
        title="Fingerprint", title_justify="left", caption_justify="left",
        caption="of the images `celltune train` trains and validates on (test images excluded)",
    )
    table.add_column("", no_wrap=True)
    table.add_column("value")
    for name, value in _fingerprint_rows(fp):
        table.add_row(name, value)
    return table


def _derived_table(summary: DatasetSummary) -> Table:
    table = Table(title="Settings derived from the data (a value you give always wins)",
                  title_justify="left")
    table.add_column("setting", no_wrap=True)
    table.add_column("value", no_wrap=True)
    table.add_column("train")
    table.add_column("why")
    for name, choice in summary.derived.items():
        use = "applied" if name in DERIVED_FIELDS else "proposed; not applied until benchmarked"
        table.add_row(name, str(choice.value), use, choice.reason)
    return table


def _problem_table(summary: DatasetSummary) -> Table:
    table = Table(title="Problems", title_justify="left")
    table.add_column("kind", no_wrap=True)
    # A file name is what the user must find: fold it over lines, never cut it.
    table.add_column("file", overflow="fold")
    table.add_column("problem")
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


# --- models --------------------------------------------------------------------------------


def models_table(rows: Sequence[Mapping[str, Any]], size: int) -> Table:
    """The ``celltune models`` table from :func:`celltune.models.models_table` rows.

    Model names are what a user copies into ``--model``, so their column never wraps or
    truncates, also in an 80-column terminal or a pipe; the description wraps instead.
    """
    # celltune.models imports torch; by the time rows exist it is loaded, so this is free.
    from celltune.models import FLOP_CONVENTION

    table = Table(
        title=f"celltune models (GFLOPs at 1×{size}×{size}; {FLOP_CONVENTION})"
    )
    longest = max((len(str(r["name"])) for r in rows), default=4)
    table.add_column("name", no_wrap=True, min_width=longest)
    # The middle columns are capped so that the width rich takes from a narrow terminal comes
    # out of the description rather than squeezing everything to a sliver.
    table.add_column("params (M)", justify="right", max_width=8, overflow="fold")
    table.add_column("GFLOPs", justify="right", no_wrap=True)
    table.add_column("input size", max_width=11, overflow="fold")
    table.add_column("study weights", max_width=10, overflow="fold")
    table.add_column("about", overflow="fold")
    for r in rows:
        table.add_row(
            str(r["name"]),
            f"{r['params'] / 1e6:.2f}",
            f"{r['gflops']:.1f}",
            str(r["input_rule"]),
            str(r["default_weights"]),
            str(r.get("description", "")),
        )
    return table


# --- downloads -----------------------------------------------------------------------------


@contextlib.contextmanager
def download_bar(
    name: str, total: int | None, done: int, console: Console | None = None
) -> Iterator[Callable[[int], None]]:
    """A transfer bar (name, bar, bytes, speed, time left); yields ``advance(n_bytes)``.

    Fits :data:`celltune.data.download.ProgressBar`; draws on ``console`` (rich's default
    console, i.e. stdout, when None).
    """
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn())
    with Progress(*columns, TransferSpeedColumn(), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task(name, total=total, completed=done)
        yield lambda n: bar.advance(task, n)
