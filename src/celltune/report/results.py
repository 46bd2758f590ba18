"""The results model of a study: one row per finished run, the table, paired comparisons.

:func:`collect` reads every finished row of a study folder, :func:`results_table` turns the
rows into the study's columns and :func:`paired_comparisons` tests rows against each other.
Rendering lives in :mod:`celltune.report.text` and :mod:`celltune.report.html`.

Example:
    >>> results = collect("studies/demo")                     # doctest: +SKIP
    >>> results_table(results)[0]["dice"]                     # doctest: +SKIP
    0.889
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from celltune.config import RunConfig
from celltune.errors import CelltuneError, RunError
from celltune.evaluation.stats import paired_tests
from celltune.models import count_params
from celltune.models.build import build_network
from celltune.rundir import RunDir, StudyDir

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


def _count_params(cfg: RunConfig) -> int | None:
    """Parameters of the row's network, rebuilt from its config without pretrained weights."""
    try:
        model_cfg = cfg.model.model_copy(update={"weights": "none"})
        # On the meta device a network has shapes only: no memory, no initialisation.
        with torch.device("meta"):
            net = build_network(model_cfg, cfg.data.channels).to("meta")
        return count_params(net)
    except (CelltuneError, RuntimeError, TypeError, ValueError):
        return None  # an unknown or unbuildable model only costs the table one cell


def _model_name(cfg: Any) -> str:
    return f"{cfg.model.name} ({cfg.model.encoder})" if cfg.model.encoder else cfg.model.name


def read_row(
    run_dir: str | os.PathLike | RunDir, label: str | None = None, split: str = "test"
) -> RowResult:
    """Read one finished run folder (``done.json``, config, evaluation, curves).

    Raises:
        RunError: the run is unfinished or its evaluation files are missing.
    """
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    if not run.is_done():
        raise RunError(
            f"{run.path}: row not finished (no {run.done_path.name}); run the study first."
        )
    done = run.read_done()
    cfg = run.read_config()
    summary = run.read_summary(split)
    metrics = run.read_metrics()
    seconds = done.get("train_seconds")
    if seconds is None and metrics:
        seconds = sum(r.get("seconds", 0.0) for r in metrics)
    params = done.get("params")
    return RowResult(
        name=run.name,
        label=label or run.name,
        run_dir=run.path,
        model=_model_name(cfg),
        weights=str(cfg.model.weights),
        aug=cfg.train.aug,
        head=cfg.model.head,
        threshold=summary.get("threshold", done.get("threshold")),
        summary=summary,
        per_image=run.read_per_image(split),
        metrics=metrics,
        threshold_curve=run.read_threshold_curve(),
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
    study = StudyDir(study_dir)
    if not study.path.is_dir():
        raise RunError(f"{study.path}: study folder not found.")
    if rows is None:
        rows = study.finished_rows()
    labels = dict(labels or {})
    finished = [r for r in rows if study.run(r).is_done()]
    if not finished:
        done = RunDir(study.path / "*").done_path.relative_to(study.path)
        raise RunError(f"{study.path}: no finished rows (no {done}); run `celltune study` first.")
    return [read_row(study.run(r), labels.get(r), split) for r in finished]


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
            "f1_iou50_median": s.get("f1_iou50_median"),
            "precision_iou50": s.get("precision_iou50"),
            "recall_iou50": s.get("recall_iou50"),
            "count_error_relative": s.get("count_error_relative"),
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
        fields of :func:`celltune.evaluation.stats.paired_tests` (mean difference is a - b;
        ``p_holm`` is the Wilcoxon p-value Holm-adjusted over the comparisons returned),
        ``higher`` (label with the higher mean, or ``"tie"``: a description, not a verdict)
        and ``significant``: the bootstrap interval excludes 0, the Holm-adjusted p-value is
        below 0.05 and the signed ranks agree with the interval (``better`` names the row).
        With ``against="best"`` the best row was chosen on these same test images, which
        the Holm correction over all its comparisons accounts for only in part: read it as
        "no other row is clearly better", not as a confirmed winner.
    """
    if against not in ("best", "all"):
        raise ValueError(f"against must be 'best' or 'all', got {against!r}.")
    scores = [{str(p["name"]): float(p[metric]) for p in r.per_image} for r in results]
    if against == "all":
        pairs = list(itertools.combinations(range(len(results)), 2))
    else:
        best = max(range(len(results)), key=lambda i: (float(results[i].summary[metric]), -i))
        pairs = [(best, i) for i in range(len(results)) if i != best]
    kept = [(i, j, sorted(scores[i].keys() & scores[j].keys())) for i, j in pairs]
    kept = [(i, j, common) for i, j, common in kept if common]
    tests = paired_tests(
        [([scores[i][k] for k in common], [scores[j][k] for k in common])
         for i, j, common in kept],
        alpha=ALPHA,
    )
    out = []
    for (i, j, common), test in zip(kept, tests, strict=True):
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
                "significant": test["better"] != "neither",
            }
        )
    return out


def study_meta(study_dir: str | os.PathLike) -> dict[str, Any]:
    """Title, description, row order, labels and paper numbers from ``STUDY/study.yaml``.

    Returns an empty dict when the folder has no ``study.yaml`` (rows are then discovered).
    """
    folder = StudyDir(study_dir)
    if not folder.has_config():
        return {}
    study = folder.read_config()
    return {
        "title": study.name,
        "description": study.description,
        "rows": [r.name for r in study.rows],
        "labels": {r.name: r.label for r in study.rows if r.label},
        "paper": {r.name: r.paper for r in study.rows if r.paper} or None,
    }
