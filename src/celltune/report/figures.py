"""The study report's figures, drawn from the rows' run folders: curves and the mask grid.

The figures themselves are drawn by :mod:`celltune.viz` from arrays and tables; this module
gathers those from the run folders and saves the figures under the study's ``plots/``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from celltune.data.samples import Sample
from celltune.errors import CelltuneError
from celltune.io import normalize, read_image, read_label, to_binary
from celltune.report.results import RowResult
from celltune.rundir import RunDir, StudyDir
from celltune.viz.curves import loss_curves, save_figure, threshold_curves
from celltune.viz.grid import DISPLAY_MAX_SIDE, GridRow, choose_grid_images, mask_grid


def write_figures(
    study_dir: str | os.PathLike, results: Sequence[RowResult], grid_images: int = 4
) -> tuple[dict[str, Path], dict[str, str]]:
    """Write ``plots/loss_curves.png``, ``threshold_curves.png`` and ``masks.png``.

    Returns:
        (figure key -> path, figure key -> why it is missing). The mask grid needs the test
        images on disk; when they cannot be read the grid is skipped with the reason.
    """
    study = StudyDir(study_dir)
    paths: dict[str, Path] = {}
    missing: dict[str, str] = {}
    runs = {r.label: r.metrics for r in results if r.metrics}
    if runs:
        paths["loss"] = save_figure(loss_curves(runs), study.figure("loss"))
    else:
        missing["loss"] = f"no row has a {RunDir(study.path).metrics_path.name}"
    curves = {r.label: r.threshold_curve for r in results if r.threshold_curve}
    if curves:
        paths["threshold"] = save_figure(threshold_curves(curves), study.figure("threshold"))
    else:
        missing["threshold"] = f"no row has a {RunDir(study.path).threshold_path.name}"
    try:
        fig = study_mask_grid(
            study.path,
            [r.name for r in results],
            n=grid_images,
            labels={r.name: r.label for r in results},
            per_image={r.name: r.per_image for r in results},
        )
        paths["masks"] = save_figure(fig, study.figure("masks"))
    except CelltuneError as exc:
        missing["masks"] = str(exc)
    return paths, missing


def _test_samples(runs: Sequence[RunDir], split: str) -> dict[str, Sample]:
    """Image name -> Sample of the split, from the runs' saved splits."""
    samples: dict[str, Sample] = {}
    for run in runs:
        if run.splits_path.is_file():
            for sample in run.read_splits()[split]:
                samples.setdefault(sample.name, sample)
    return samples


def study_mask_grid(
    study_dir: str | os.PathLike,
    rows: Sequence[str],
    n: int = 4,
    labels: Mapping[str, str] | None = None,
    split: str = "test",
    max_side: int = DISPLAY_MAX_SIDE,
    per_image: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> Figure:
    """Load a study's predictions from its run folders and draw :func:`~celltune.viz.grid.mask_grid`.

    Args:
        study_dir: Study folder holding one run folder per row.
        rows: Row (run folder) names, in column order.
        n: Number of images (see :func:`~celltune.viz.grid.choose_grid_images`).
        labels: Optional row -> column title.
        split: Evaluated split whose saved masks are shown.
        max_side: Longest displayed side of a panel.
        per_image: Row -> its per-image scores when already read (else read from disk).

    Raises:
        RunError: a row lacks ``per_image.csv``, or an image's mask does not fit it.
    """
    study = StudyDir(study_dir)
    runs = {row: study.run(row) for row in rows}
    labels = dict(labels or {})
    scored: dict[str, list[Mapping[str, Any]]] = {}
    for row, run in runs.items():
        table = per_image[row] if per_image and row in per_image else run.read_per_image(split)
        # Only images whose mask was saved can be drawn.
        scored[row] = [r for r in table if run.has_mask(split, str(r["name"]))]
    samples = _test_samples(list(runs.values()), split)
    candidates = {
        row: [r for r in rs if r["name"] in samples and samples[r["name"]].label is not None]
        for row, rs in scored.items()
    }
    grid_rows = []
    for name in choose_grid_images(candidates, n=n):
        sample = samples[name]
        image = normalize(read_image(sample.image))
        truth = to_binary(read_label(sample.label, shape=image.shape[:2]))
        preds, dice = {}, {}
        for row, run in runs.items():
            title = labels.get(row, row)
            preds[title] = run.read_mask(split, name, truth.shape)
            dice[title] = next(float(r["dice"]) for r in scored[row] if r["name"] == name)
        grid_rows.append(GridRow(name, image, truth, preds, dice))
    return mask_grid(grid_rows, [labels.get(row, row) for row in rows], max_side=max_side)
