"""One run end to end: train, choose the threshold and the instance step on validation,
evaluate on test, plot.

Example:
    >>> from celltune.config import RunConfig
    >>> from celltune.workflows.run import run_pipeline
    >>> result = run_pipeline(RunConfig(), "runs/unet")        # doctest: +SKIP
    >>> result.summary["dice"]                                  # doctest: +SKIP
    0.87
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celltune.config import RunConfig
from celltune.data.samples import Splits
from celltune.evaluation.evaluate import evaluate_run, tune_run
from celltune.rundir import RunDir
from celltune.training.distributed import is_worker
from celltune.training.fit import fit
from celltune.viz.curves import loss_curves, postprocess_curve, save_figure, threshold_curves


@dataclass
class RunResult:
    """Where a finished run lives and what it scored.

    ``worker`` is True in a DDP worker process, which only trained: rank 0 chose the
    threshold, evaluated and wrote every file, and alone reports.
    """

    run_dir: Path
    summary: dict[str, Any]
    threshold: float
    train_seconds: float
    worker: bool = False


def run_pipeline(
    config: RunConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    evaluate_split: str | None = "test",
    splits: Splits | None = None,
) -> RunResult:
    """Train ``config`` into ``out``, pick the threshold and the instance parameters on
    validation, evaluate, and write the plots.

    A finished run (``done.json`` present) is not retrained when ``resume`` is set.
    """
    run = RunDir(out)
    if resume and run.is_done():
        info = run.read_done()
        summary = run.read_summary(evaluate_split) if evaluate_split else {}
        return RunResult(run.path, summary, info["threshold"], info["train_seconds"])

    started = time.monotonic()
    trained = fit(config, out, resume=resume, overwrite=overwrite, progress=progress,
                  splits=splits)
    train_seconds = time.monotonic() - started
    if is_worker():
        return RunResult(run.path, {}, math.nan, train_seconds, worker=True)
    # The checkpoint and config are read once and used by the sweeps and the evaluation.
    threshold, _, predictor = tune_run(run, config=trained.config, progress=progress)
    summary = {}
    if evaluate_split:
        summary = evaluate_run(run, split=evaluate_split, progress=progress,
                               predictor=predictor, config=trained.config)
    write_run_plots(run)
    run.write_done(threshold.best_threshold, train_seconds)
    return RunResult(run.path, summary, threshold.best_threshold, train_seconds)


def write_run_plots(run: RunDir) -> list[Path]:
    """``plots/loss.png``, ``plots/threshold.png`` and ``plots/postprocess.png`` for one run."""
    paths = []
    rows = run.read_metrics()
    if rows:
        paths.append(save_figure(loss_curves({run.name: rows}), run.loss_plot))
    curve = run.read_threshold_curve()
    if curve is not None:
        paths.append(save_figure(threshold_curves({run.name: curve}), run.threshold_plot))
    sweep = run.read_postprocess_curve()
    if sweep is not None:
        paths.append(save_figure(postprocess_curve(sweep, title=run.name), run.postprocess_plot))
    return paths
