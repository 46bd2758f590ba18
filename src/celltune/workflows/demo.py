"""``celltune demo``: the whole study on built-in synthetic data, sized for a laptop CPU."""

from __future__ import annotations

import os
import time
from typing import Any

from rich.console import Console

from celltune.config import load_study_config, packaged_config
from celltune.errors import RunError
from celltune.report.writer import render_console
from celltune.rundir import StudyDir
from celltune.workflows.study import StudyOutcome, run_study


def run_demo(
    out: str | os.PathLike = "celltune-demo",
    *,
    overwrite: bool = False,
    console: Any = None,
    rows: list[str] | None = None,
) -> StudyOutcome:
    """Generate synthetic data, train and compare every model, write and print the report.

    Re-running on the same folder reuses finished rows and resumes an interrupted one.
    """
    console = console or Console()
    folder = StudyDir(out)
    out = folder.path
    if out.is_dir() and any(out.iterdir()) and not folder.has_config() and not overwrite:
        raise RunError(
            f"{out}: folder exists and is not a celltune demo; choose another --out or pass "
            "--overwrite."
        )
    study = load_study_config(packaged_config("demo"))
    console.print(
        f"[bold]celltune demo[/]: {len(rows or study.rows)} models on synthetic microscopy "
        f"({study.defaults.data.synthetic.n} images, {study.defaults.data.synthetic.size}px) "
        f"into [bold]{out}[/]"
    )
    started = time.monotonic()
    outcome = run_study(study, out, resume=True, overwrite=overwrite, rows=rows, console=console)
    minutes = (time.monotonic() - started) / 60
    if outcome.report is not None:
        report = outcome.report
        render_console(report.results, console, paper=report.paper, title=report.title)
    console.print(f"Finished in {minutes:.1f} min. Report: [bold]{folder.report_html}[/]")
    console.print(f"Run folders, figures and tables: [bold]{out}[/]")
    return outcome
