"""One run end to end: train, choose the threshold on validation, evaluate on test, plot.

Example:
    >>> from celltune.config import RunConfig
    >>> from celltune.pipeline import run_pipeline
    >>> result = run_pipeline(RunConfig(), "runs/unet")        # doctest: +SKIP
    >>> result.summary["dice"]                                  # doctest: +SKIP
    0.87
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celltune.config import RunConfig
from celltune.io import write_text

DONE_FILE = "done.json"


@dataclass
class RunResult:
    """Where a finished run lives and what it scored."""

    run_dir: Path
    summary: dict[str, Any]
    threshold: float
    train_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def run_pipeline(
    config: RunConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    evaluate_split: str | None = "test",
    splits: Any = None,
) -> RunResult:
    """Train ``config`` into ``out``, pick the threshold, evaluate, and write the plots.

    A finished run (``done.json`` present) is not retrained when ``resume`` is set.
    """
    from celltune.evaluation.evaluate import choose_threshold, evaluate_run, read_summary
    from celltune.training.fit import fit

    run_dir = Path(out)
    done = run_dir / DONE_FILE
    if resume and done.is_file():
        info = json.loads(done.read_text(encoding="utf-8"))
        summary = read_summary(run_dir, evaluate_split) if evaluate_split else {}
        return RunResult(run_dir, summary, info["threshold"], info["train_seconds"])

    started = time.monotonic()
    run_dir = fit(
        config, run_dir, resume=resume, overwrite=overwrite, progress=progress, splits=splits
    )
    train_seconds = time.monotonic() - started
    from celltune.training.distributed import process_rank

    if process_rank() > 0:
        # A DDP worker only trains; rank 0 alone chooses the threshold, evaluates and writes.
        return RunResult(run_dir, {}, float("nan"), train_seconds, {"rank": process_rank()})
    threshold = choose_threshold(run_dir, progress=progress)
    summary = evaluate_run(run_dir, split=evaluate_split, progress=progress) if evaluate_split else {}
    write_run_plots(run_dir)
    write_text(
        done,
        json.dumps(
            {"threshold": threshold.best_threshold, "train_seconds": round(train_seconds, 2)},
            indent=2,
        ),
    )
    return RunResult(run_dir, summary, threshold.best_threshold, train_seconds)


def write_run_plots(run_dir: Path) -> list[Path]:
    """``plots/loss.png`` and ``plots/threshold.png`` for one run."""
    from celltune.training.callbacks import read_metrics
    from celltune.viz.curves import loss_curves, save_figure, threshold_curves

    paths = []
    rows = read_metrics(run_dir / "metrics.csv")
    if rows:
        paths.append(save_figure(loss_curves({run_dir.name: rows}), run_dir / "plots" / "loss.png"))
    tpath = run_dir / "threshold.json"
    if tpath.is_file():
        curve = json.loads(tpath.read_text(encoding="utf-8"))
        fig = threshold_curves({run_dir.name: curve})
        paths.append(save_figure(fig, run_dir / "plots" / "threshold.png"))
    return paths
