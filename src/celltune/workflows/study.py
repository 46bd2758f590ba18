"""Run every row of a study config, then write the comparison report.

A study folder holds one run folder per row, the shared data (when synthetic), and the
report (``results.md``, ``results.csv``, ``report.html``, ``plots/``). Finished rows are
skipped on ``--resume``; a row interrupted mid-training continues from its last checkpoint.

Example:
    >>> from celltune.workflows.study import run_study
    >>> outcome = run_study("configs/demo.yaml", "studies/demo")   # doctest: +SKIP
    >>> outcome.report.paths["html"]                               # doctest: +SKIP
    PosixPath('studies/demo/report.html')
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celltune.config import StudyConfig, StudyRow, load_study_config
from celltune.data.synthetic import ensure_dataset
from celltune.errors import ConfigError, RunError
from celltune.report.writer import StudyReport, regenerate
from celltune.rundir import StudyDir
from celltune.training.distributed import is_worker
from celltune.workflows.run import RunResult, run_pipeline


@dataclass
class StudyOutcome:
    """The rows a study ran and the report written from them.

    ``report`` is None in a DDP worker process, which trains every row with rank 0 but
    writes nothing; rank 0 alone reports.
    """

    results: list[RunResult]
    report: StudyReport | None

    @property
    def worker(self) -> bool:
        return self.report is None


def _prepare(study: StudyDir, *, resume: bool, overwrite: bool) -> None:
    out = study.path
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


def _shared_data(study: StudyConfig, folder: StudyDir) -> StudyConfig:
    """Generate the synthetic dataset once for all rows when the study names no data root."""
    if study.defaults.data.root is not None:
        return study
    syn = study.defaults.data.synthetic
    root = folder.data_dir
    # A generation interrupted by a kill is redone, not reused half-written on --resume.
    ensure_dataset(root, n=syn.n, size=syn.size, seed=syn.seed, png_fraction=syn.png_fraction)
    data = study.defaults.data.model_copy(update={"root": root})
    return study.model_copy(update={"defaults": study.defaults.model_copy(update={"data": data})})


def select_rows(study: StudyConfig, names: list[str] | None) -> list[StudyRow]:
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
    data_root: str | os.PathLike | None = None,
    progress: bool = True,
    console: Any = None,
) -> StudyOutcome:
    """Train and evaluate every row, then write the report.

    ``data_root`` replaces the config's data root for every row. ``console`` (a rich
    Console), when given, receives one line per row as it starts.
    """
    study = config if isinstance(config, StudyConfig) else load_study_config(config)
    if data_root is not None:
        data = study.defaults.data.model_copy(update={"root": Path(data_root)})
        defaults = study.defaults.model_copy(update={"data": data})
        study = study.model_copy(update={"defaults": defaults})
    folder = StudyDir(out)
    # Under DDP, workers re-run the whole command alongside rank 0 and train every row with
    # it; rank 0 alone prepares (with --overwrite: deletes) and writes the study folder.
    worker = is_worker()
    if not worker:
        _prepare(folder, resume=resume, overwrite=overwrite)
    study = _shared_data(study, folder)
    if not worker:
        folder.write_config(study)
    selected = select_rows(study, rows)
    results = []
    for i, row in enumerate(selected, 1):
        run = folder.run(row.name)
        if console is not None and not worker:
            state = "finished, skipped" if run.is_done() else "training"
            console.print(f"[bold]row {i}/{len(selected)}[/] {row.label or row.name}: {state}")
        results.append(run_pipeline(
            study.run_config(row), run.path, resume=run.path.exists(), overwrite=False,
            progress=progress,
        ))
    return StudyOutcome(results, None if worker else regenerate(folder.path))
