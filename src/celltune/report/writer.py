"""Write a study's report files: ``results.md``, ``results.csv``, figures and ``report.html``.

Example:
    >>> report = regenerate("studies/demo")                  # doctest: +SKIP
    >>> report.paths["html"]                                 # doctest: +SKIP
    PosixPath('studies/demo/report.html')
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from celltune.errors import RunError
from celltune.io import write_text
from celltune.report.figures import write_figures
from celltune.report.html import render_html
from celltune.report.results import PaperNumbers, RowResult, collect, results_table, study_meta
from celltune.report.text import console_table, csv_text, render_markdown
from celltune.rundir import StudyDir


def write_results(
    study_dir: str | os.PathLike,
    results: Sequence[RowResult],
    title: str = "celltune study",
    paper: PaperNumbers | None = None,
    *,
    labels: Mapping[str, str] | None = None,
    description: str = "",
    grid_images: int = 4,
) -> dict[str, Path]:
    """Write ``results.md``, ``results.csv``, the figures and ``report.html`` (all atomic).

    Args:
        study_dir: The study folder; outputs go there and under its ``plots/``.
        results: Rows from :func:`~celltune.report.results.collect`, in report order.
        title: Report title.
        paper: Optional row -> published ``dice``, ``iou``, ``threshold``.
        labels: Optional row -> display label (overrides the rows' labels).
        description: Optional paragraph under the title.
        grid_images: Test images in the mask comparison grid.

    Returns:
        Output key (``md``, ``csv``, ``html``, ``loss``, ``threshold``, ``masks``) -> path;
        a figure that could not be drawn is absent (report.html says why).
    """
    if not results:
        raise RunError(f"{study_dir}: no finished rows to report.")
    if labels:
        results = [replace(r, label=labels.get(r.name) or r.label) for r in results]
    study = StudyDir(study_dir)
    paths, missing = write_figures(study.path, results, grid_images)
    markdown = render_markdown(results, title, paper, description)
    paths["md"] = write_text(study.results_md, markdown)
    paths["csv"] = write_text(study.results_csv, csv_text(results_table(results, paper)))
    keys = ("loss", "threshold", "masks")
    figures = {key: path.read_bytes() for key, path in paths.items() if key in keys}
    page = render_html(results, title, figures, missing, paper, description)
    paths["html"] = write_text(study.report_html, page)
    return paths


@dataclass
class StudyReport:
    """What :func:`regenerate` read and wrote."""

    results: list[RowResult]
    paths: dict[str, Path]
    title: str
    paper: PaperNumbers | None = None


def regenerate(
    study_dir: str | os.PathLike, title: str | None = None, grid_images: int = 4
) -> StudyReport:
    """Rebuild every report file of an existing study folder (``celltune report``).

    Rows, labels, title and paper numbers come from ``study.yaml`` when the folder has one
    (``celltune study`` writes it); otherwise every sub-folder with ``done.json`` is a row.
    """
    meta = study_meta(study_dir)
    results = collect(study_dir, meta.get("rows"), meta.get("labels"))
    title = title or meta.get("title") or Path(study_dir).resolve().name
    paper = meta.get("paper")
    paths = write_results(
        study_dir,
        results,
        title,
        paper,
        description=meta.get("description", ""),
        grid_images=grid_images,
    )
    return StudyReport(results, paths, title, paper)


def render_console(
    results: Sequence[RowResult],
    console: Any,
    paper: PaperNumbers | None = None,
    title: str | None = None,
) -> None:
    """Print a compact results table with rich (the files hold every column).

    Optional columns (parameters, training time, F1, IoU) are dropped, in that order, until
    the table fits the console; row labels fold.
    """
    console.print(console_table(results_table(results, paper), console, title))
