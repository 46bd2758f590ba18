"""The study report: one table row per finished run, figures, and paired model comparisons.

:func:`collect` reads every finished row of a study folder, :func:`results_table` turns the
rows into the study's columns, and :func:`write_results` writes ``results.md``,
``results.csv``, ``report.html`` (self-contained) and the figures under ``plots/``.

Example:
    >>> results = collect("studies/demo")                     # doctest: +SKIP
    >>> paths = write_results("studies/demo", results)        # doctest: +SKIP
    >>> paths["html"]                                         # doctest: +SKIP
    PosixPath('studies/demo/report.html')
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from celltune.errors import CelltuneError, RunError

DONE_FILE = "done.json"
#: A study folder may hold its config here; it supplies row order, labels and paper numbers.
STUDY_FILE = "study.yaml"
ALPHA = 0.05
#: row -> published numbers of the reproduced study (``dice``, ``iou``, ``threshold``).
PaperNumbers = Mapping[str, Mapping[str, Any]]


@dataclass
class RowResult:
    """Everything the report needs about one finished row of a study."""

    name: str
    label: str
    run_dir: Path
    model: str
    weights: str
    aug: str
    head: str
    threshold: float | None
    summary: dict[str, Any]
    per_image: list[dict[str, Any]]
    metrics: list[dict[str, float]] = field(default_factory=list)
    threshold_curve: dict[str, Any] | None = None
    train_seconds: float | None = None
    params: int | None = None


def _count_params(cfg: Any) -> int | None:
    """Parameters of the row's network, rebuilt from its config without pretrained weights."""
    try:
        import torch

        from celltune.models import count_params
        from celltune.training.module import build_network

        model_cfg = cfg.model.model_copy(update={"weights": "none"})
        # On the meta device a network has shapes only: no memory, no initialisation.
        with torch.device("meta"):
            net = build_network(model_cfg, cfg.data.channels).to("meta")
        return count_params(net)
    except (CelltuneError, ImportError, RuntimeError, TypeError, ValueError):
        return None  # an unknown or unbuildable model only costs the table one cell


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunError(f"{path}: unreadable ({exc}); rerun this row of the study.") from exc


def _model_name(cfg: Any) -> str:
    return f"{cfg.model.name} ({cfg.model.encoder})" if cfg.model.encoder else cfg.model.name


def read_row(
    run_dir: str | os.PathLike, label: str | None = None, split: str = "test"
) -> RowResult:
    """Read one finished run folder (``done.json``, config, evaluation, curves).

    Raises:
        RunError: the run is unfinished or its evaluation files are missing.
    """
    from celltune.config import load_run_config
    from celltune.evaluation.evaluate import read_per_image, read_summary
    from celltune.training.callbacks import read_metrics

    run = Path(run_dir)
    if not (run / DONE_FILE).is_file():
        raise RunError(f"{run}: row not finished (no {DONE_FILE}); run the study first.")
    done = _read_json(run / DONE_FILE)
    cfg = load_run_config(run / "config.yaml")
    summary = read_summary(run, split)
    per_image_path = run / "eval" / split / "per_image.csv"
    if not per_image_path.is_file():
        raise RunError(f"{per_image_path}: not found; run `celltune evaluate {run}` first.")
    metrics = read_metrics(run / "metrics.csv")
    curve_path = run / "threshold.json"
    curve = _read_json(curve_path) if curve_path.is_file() else None
    seconds = done.get("train_seconds")
    if seconds is None and metrics:
        seconds = sum(r.get("seconds", 0.0) for r in metrics)
    params = done.get("params")
    return RowResult(
        name=run.name,
        label=label or run.name,
        run_dir=run,
        model=_model_name(cfg),
        weights=str(cfg.model.weights),
        aug=cfg.train.aug,
        head=cfg.model.head,
        threshold=summary.get("threshold", done.get("threshold")),
        summary=summary,
        per_image=read_per_image(per_image_path),
        metrics=metrics,
        threshold_curve=curve,
        train_seconds=None if seconds is None else float(seconds),
        params=int(params) if params is not None else _count_params(cfg),
    )


def collect(
    study_dir: str | os.PathLike,
    rows: Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None,
    split: str = "test",
) -> list[RowResult]:
    """Read the finished rows of a study folder; unfinished rows are left out.

    Args:
        study_dir: Folder holding one run folder per row.
        rows: Row names in report order; default: every sub-folder with ``done.json``, sorted.
        labels: Optional row -> display label.
        split: Evaluated split to report.

    Raises:
        RunError: the folder is missing or no row has finished.
    """
    study = Path(study_dir)
    if not study.is_dir():
        raise RunError(f"{study}: study folder not found.")
    if rows is None:
        rows = sorted(p.name for p in study.iterdir() if (p / DONE_FILE).is_file())
    labels = dict(labels or {})
    finished = [r for r in rows if (study / r / DONE_FILE).is_file()]
    if not finished:
        raise RunError(f"{study}: no finished rows (no */{DONE_FILE}); run `celltune study` first.")
    return [read_row(study / r, labels.get(r), split) for r in finished]


def _ci(summary: Mapping[str, Any], key: str) -> tuple[float, float]:
    low, high = summary.get(f"{key}_ci95") or (math.nan, math.nan)
    return float(low), float(high)


def results_table(
    results: Sequence[RowResult], paper: PaperNumbers | None = None
) -> list[dict[str, Any]]:
    """One dict per row with the columns of ``results.csv`` (raw numbers).

    ``threshold`` is ``"argmax"`` for two-class heads. When ``paper`` (row -> ``dice``,
    ``iou``, ``threshold``) is given, ``paper_threshold``, ``paper_dice`` and ``paper_iou``
    are added (None where unknown).
    """
    table = []
    for r in results:
        s = r.summary
        (dl, dh), (il, ih) = _ci(s, "dice"), _ci(s, "iou")
        row = {
            "row": r.name,
            "label": r.label,
            "model": r.model,
            "weights": r.weights,
            "aug": r.aug,
            "head": r.head,
            "threshold": "argmax" if r.head == "two_class" else r.threshold,
            "n_images": int(s.get("n_images", len(r.per_image))),
            "dice": float(s["dice"]),
            "dice_ci_low": dl,
            "dice_ci_high": dh,
            "iou": float(s["iou"]),
            "iou_ci_low": il,
            "iou_ci_high": ih,
            "dice_pooled": s.get("dice_pooled"),
            "iou_pooled": s.get("iou_pooled"),
            "f1_iou50": s.get("f1_iou50"),
            "f1_mean_50_90": s.get("f1_mean_50_90"),
            "params": r.params,
            "train_seconds": r.train_seconds,
        }
        if paper is not None:
            ref = paper.get(r.name) or {}
            row.update({f"paper_{k}": ref.get(k) for k in ("threshold", "dice", "iou")})
        table.append(row)
    return table


def paired_comparisons(
    results: Sequence[RowResult], metric: str = "dice", against: str = "best"
) -> list[dict[str, Any]]:
    """Paired tests of per-image scores on the test images two rows have in common.

    Args:
        results: Rows of the study.
        metric: Per-image column compared (``dice`` or ``iou``).
        against: ``"best"`` compares the row with the highest mean ``metric`` to every other
            row; ``"all"`` compares every pair.

    Returns:
        Dicts with ``a``, ``b`` (labels), ``n_common``, ``n_only_a``, ``n_only_b``, the
        fields of :func:`celltune.evaluation.stats.paired_test` (mean difference is a - b),
        ``higher`` (label with the higher mean, or ``"tie"``) and ``significant``
        (Wilcoxon p < 0.05).
    """
    from celltune.evaluation.stats import paired_test

    if against not in ("best", "all"):
        raise ValueError(f"against must be 'best' or 'all', got {against!r}.")
    scores = [{str(p["name"]): float(p[metric]) for p in r.per_image} for r in results]
    if against == "all":
        pairs = list(itertools.combinations(range(len(results)), 2))
    else:
        best = max(range(len(results)), key=lambda i: (float(results[i].summary[metric]), -i))
        pairs = [(best, i) for i in range(len(results)) if i != best]
    out = []
    for i, j in pairs:
        common = sorted(scores[i].keys() & scores[j].keys())
        if not common:
            continue
        test = paired_test([scores[i][k] for k in common], [scores[j][k] for k in common])
        diff = test["mean_diff"]
        higher = results[i].label if diff > 0 else results[j].label if diff < 0 else "tie"
        out.append(
            {
                "a": results[i].label,
                "b": results[j].label,
                "n_common": len(common),
                "n_only_a": len(scores[i]) - len(common),
                "n_only_b": len(scores[j]) - len(common),
                **test,
                "higher": higher,
                "significant": bool(test["wilcoxon_p"] < ALPHA),
            }
        )
    return out


def write_figures(
    study_dir: str | os.PathLike, results: Sequence[RowResult], grid_images: int = 4
) -> tuple[dict[str, Path], dict[str, str]]:
    """Write ``plots/loss_curves.png``, ``threshold_curves.png`` and ``masks.png``.

    Returns:
        (figure key -> path, figure key -> why it is missing). The mask grid needs the test
        images on disk; when they cannot be read the grid is skipped with the reason.
    """
    from celltune.viz.curves import loss_curves, save_figure, threshold_curves
    from celltune.viz.grid import study_mask_grid

    plots = Path(study_dir) / "plots"
    paths: dict[str, Path] = {}
    missing: dict[str, str] = {}
    runs = {r.label: r.metrics for r in results if r.metrics}
    if runs:
        paths["loss"] = save_figure(loss_curves(runs), plots / "loss_curves.png")
    else:
        missing["loss"] = "no row has a metrics.csv"
    curves = {r.label: r.threshold_curve for r in results if r.threshold_curve}
    if curves:
        paths["threshold"] = save_figure(threshold_curves(curves), plots / "threshold_curves.png")
    else:
        missing["threshold"] = "no row has a threshold.json"
    try:
        fig = study_mask_grid(
            study_dir,
            [r.name for r in results],
            n=grid_images,
            labels={r.name: r.label for r in results},
        )
        paths["masks"] = save_figure(fig, plots / "masks.png")
    except CelltuneError as exc:
        missing["masks"] = str(exc)
    return paths, missing


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
        results: Rows from :func:`collect`, in report order.
        title: Report title.
        paper: Optional row -> published ``dice``, ``iou``, ``threshold``.
        labels: Optional row -> display label (overrides the rows' labels).
        description: Optional paragraph under the title.
        grid_images: Test images in the mask comparison grid.

    Returns:
        Output key (``md``, ``csv``, ``html``, ``loss``, ``threshold``, ``masks``) -> path;
        a figure that could not be drawn is absent (report.html says why).
    """
    from celltune.io import write_text
    from celltune.report_format import csv_text, render_markdown
    from celltune.report_html import render_html

    if not results:
        raise RunError(f"{study_dir}: no finished rows to report.")
    if labels:
        results = [replace(r, label=labels.get(r.name) or r.label) for r in results]
    study = Path(study_dir)
    paths, missing = write_figures(study, results, grid_images)
    markdown = render_markdown(results, title, paper, description)
    paths["md"] = write_text(study / "results.md", markdown)
    paths["csv"] = write_text(study / "results.csv", csv_text(results_table(results, paper)))
    keys = ("loss", "threshold", "masks")
    figures = {key: path.read_bytes() for key, path in paths.items() if key in keys}
    page = render_html(results, title, figures, missing, paper, description)
    paths["html"] = write_text(study / "report.html", page)
    return paths


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
    from celltune.report_format import console_table

    console.print(console_table(results_table(results, paper), console, title))


def study_meta(study_dir: str | os.PathLike) -> dict[str, Any]:
    """Title, description, row order, labels and paper numbers from ``STUDY/study.yaml``.

    Returns an empty dict when the folder has no ``study.yaml`` (rows are then discovered).
    """
    from celltune.config import load_study_config

    path = Path(study_dir) / STUDY_FILE
    if not path.is_file():
        return {}
    study = load_study_config(path)
    return {
        "title": study.name,
        "description": study.description,
        "rows": [r.name for r in study.rows],
        "labels": {r.name: r.label for r in study.rows if r.label},
        "paper": {r.name: r.paper for r in study.rows if r.paper} or None,
    }


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
