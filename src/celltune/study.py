"""Run every row of a study config, then write the comparison report.

A study folder holds one run folder per row, the shared data (when synthetic), and the
report (``results.md``, ``results.csv``, ``report.html``, ``plots/``). Finished rows are
skipped on ``--resume``; a row interrupted mid-training continues from its last checkpoint.

Example:
    >>> from celltune.study import run_study
    >>> results = run_study("configs/demo.yaml", "studies/demo")   # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from celltune.config import StudyConfig, load_study_config, save_run_config
from celltune.errors import ConfigError, RunError
from celltune.pipeline import DONE_FILE, RunResult, run_pipeline
from celltune.training.distributed import is_worker

STUDY_CONFIG = "study.yaml"


def _prepare(out: Path, *, resume: bool, overwrite: bool) -> None:
    busy = out.is_dir() and any(out.iterdir())
    if busy and overwrite:
        shutil.rmtree(out)
    elif busy and not resume:
        raise RunError(
            f"{out}: folder exists and is not empty; pass --resume to continue the study or "
            "--overwrite to replace it."
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"{out}: cannot create the study folder ({exc.strerror}).") from exc


def _shared_data(study: StudyConfig, out: Path) -> StudyConfig:
    """Generate the synthetic dataset once for all rows when the study names no data root."""
    if study.defaults.data.root is not None:
        return study
    from celltune.data.synthetic import ensure_dataset

    syn = study.defaults.data.synthetic
    root = out / "data"
    # A generation interrupted by a kill is redone, not reused half-written on --resume.
    ensure_dataset(root, n=syn.n, size=syn.size, seed=syn.seed, png_fraction=syn.png_fraction)
    data = study.defaults.data.model_copy(update={"root": root})
    return study.model_copy(update={"defaults": study.defaults.model_copy(update={"data": data})})


def select_rows(study: StudyConfig, names: list[str] | None) -> list[Any]:
    if not names:
        return list(study.rows)
    known = {r.name: r for r in study.rows}
    missing = [n for n in names if n not in known]
    if missing:
        raise ConfigError(
            f"Unknown study row(s) {', '.join(missing)}; rows are: {', '.join(known)}."
        )
    return [known[n] for n in names]


def run_study(
    config: str | os.PathLike | StudyConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    rows: list[str] | None = None,
    progress: bool = True,
    console: Any = None,
) -> list[RunResult]:
    """Train and evaluate every row, then write the report; returns one result per row."""
    study = config if isinstance(config, StudyConfig) else load_study_config(config)
    out = Path(out)
    # Under DDP, workers re-run the whole command alongside rank 0 and train every row with
    # it; rank 0 alone prepares (with --overwrite: deletes) and writes the study folder.
    worker = is_worker()
    if not worker:
        _prepare(out, resume=resume, overwrite=overwrite)
    study = _shared_data(study, out)
    if not worker:
        save_run_config(study, out / STUDY_CONFIG)  # type: ignore[arg-type]
    selected = select_rows(study, rows)
    results = []
    for i, row in enumerate(selected, 1):
        run_dir = out / row.name
        cfg = study.run_config(row)
        finished = (run_dir / DONE_FILE).is_file()
        if console is not None and not worker:
            state = "finished, skipped" if finished else "training"
            console.print(f"[bold]row {i}/{len(selected)}[/] {row.label or row.name}: {state}")
        started = time.monotonic()
        result = run_pipeline(
            cfg, run_dir, resume=run_dir.exists(), overwrite=False, progress=progress
        )
        result.extra["label"] = row.label or row.name
        result.extra["wall_seconds"] = time.monotonic() - started
        results.append(result)
    if not worker:
        write_report(out)
    return results


def write_report(out: str | os.PathLike) -> Path:
    """(Re)write results.md/csv, figures and report.html from the finished rows."""
    from celltune.report import regenerate

    regenerate(out)
    return Path(out) / "report.html"
