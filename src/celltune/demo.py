"""``celltune demo``: the whole study on built-in synthetic data, sized for a laptop CPU."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from celltune.config import load_study_config, packaged_config
from celltune.errors import RunError
from celltune.study import STUDY_CONFIG, run_study


def run_demo(
    out: str | os.PathLike = "celltune-demo",
    *,
    overwrite: bool = False,
    console: Any = None,
    rows: list[str] | None = None,
) -> list[Any]:
    """Generate synthetic data, train and compare every model, write and print the report.

    Re-running on the same folder reuses finished rows and resumes an interrupted one.
    """
    from rich.console import Console

    console = console or Console()
    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not (out / STUDY_CONFIG).is_file() and not overwrite:
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
    results = run_study(study, out, resume=True, overwrite=overwrite, rows=rows, console=console)
    minutes = (time.monotonic() - started) / 60
    from celltune.report import collect, render_console, study_meta

    meta = study_meta(out)
    names = [r.run_dir.name for r in results]
    render_console(collect(out, names, meta.get("labels")), console, paper=meta.get("paper"),
                   title=meta.get("title"))
    console.print(f"Finished in {minutes:.1f} min. Report: [bold]{out / 'report.html'}[/]")
    console.print(f"Run folders, figures and tables: [bold]{out}[/]")
    return results
