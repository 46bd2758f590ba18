"""``celltune study``, ``report`` and ``bench``: compare models (part of the command line).

The functions are registered as commands by :mod:`celltune.cli`; each parses its options,
calls one library function and prints the result.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from celltune.runtime import tune_allocator

Opt = typer.Option
Arg = typer.Argument


def report(
    study_dir: Annotated[Path, Arg(help="Study folder (one run folder per row).")],
    title: Annotated[str | None, Opt(help="Report title (default: the study's name).")] = None,
    images: Annotated[int, Opt(help="Test images in the mask comparison grid.")] = 4,
) -> None:
    """Regenerate results.md, results.csv, report.html and plots/ from a finished study folder.

    Rows, labels and paper numbers come from STUDY_DIR/study.yaml (written by `celltune study`).

    Without it, every sub-folder holding done.json is a row.

    Example:

      celltune report studies/demo
    """
    from celltune.report import regenerate, render_console

    console = Console()
    result = regenerate(study_dir, title=title, grid_images=images)
    render_console(result.results, console, result.paper, title=result.title)
    console.print(f"Report: [bold]{result.paths['html']}[/]")


def study(
    config: Annotated[Path, Arg(help="Study config YAML (see configs/).")],
    out: Annotated[Path, Opt("--out", "-o", help="Study folder to create.")] = Path(
        "studies/study"
    ),
    data: Annotated[Path | None, Opt(
        help="Dataset root for every row (overrides the config).")] = None,
    rows: Annotated[str | None, Opt(
        help="Comma-separated row names to run (default: all).")] = None,
    resume: Annotated[
        bool, Opt(help="Skip finished rows and continue an interrupted one.")
    ] = False,
    overwrite: Annotated[bool, Opt(help="Replace an existing study folder.")] = False,
) -> None:
    """Train and evaluate every row of a study, then write results.md/csv and report.html.

    Examples:

      celltune study configs/neurips.yaml --data data/neurips --out studies/neurips

      celltune study configs/neurips.yaml --out studies/neurips --resume
    """
    from celltune.report import render_console
    from celltune.workflows.study import run_study

    tune_allocator()
    console = Console()
    outcome = run_study(config, out, resume=resume, overwrite=overwrite, data_root=data,
                        rows=rows.split(",") if rows else None, console=console)
    if outcome.report is None:  # a DDP worker process: rank 0 reports
        return
    report = outcome.report
    render_console(report.results, console, paper=report.paper, title=report.title)
    console.print(f"Report: [bold]{report.paths['html']}[/]")


def bench(
    data: Annotated[Path, Arg(help="Dataset folder (images/ and labels/, any layout celltune reads).")],
    out: Annotated[Path, Opt("--out", "-o", help="Benchmark folder (reused: finished trainings are kept).")],
    minutes: Annotated[float, Opt(help="Wall-clock training budget per training, in minutes.")] = 6.0,
    seeds: Annotated[str, Opt(help="Comma-separated training seeds.")] = "0,1,2",
    recipes: Annotated[str, Opt(
        help="Comma-separated recipes: celltune, plain_smp, cellpose (needs celltune[bench]).")
    ] = "celltune,plain_smp,cellpose",
    split: Annotated[Path | None, Opt(
        help="Your own split: JSON with train, val and test lists of image names.")] = None,
    group: Annotated[str | None, Opt(
        help="Regular expression naming the group of correlated images (slide, movie) in a "
        "file name; a group is never split.")] = None,
    keep_checkpoints: Annotated[bool, Opt(help="Keep every training's weights.")] = False,
) -> None:
    """Which tool segments your cells best? celltune, a plain SMP loop and Cellpose, compared.

    Each recipe trains with the same budget on the same split, once per seed.

    The split keeps correlated images (one slide, one movie) together; it is saved as
    OUT/split.json and reused. Thresholds and checkpoints are chosen on validation only.

    OUT/results.md: Dice, IoU and instance F1 per recipe, and paired intervals per pair.

    Examples:

      celltune bench data/my_cells --out bench/my_cells --minutes 6

      celltune bench data/my_cells --out bench/quick --minutes 1 --seeds 0 --recipes celltune,plain_smp
    """
    from celltune.workflows.bench import render_markdown, run_benchmark

    tune_allocator()
    console = Console()
    result = run_benchmark(
        data, out, recipes=[r.strip() for r in recipes.split(",") if r.strip()],
        seeds=[int(s) for s in seeds.split(",")], minutes=minutes, split_file=split,
        group_pattern=group, keep_checkpoints=keep_checkpoints,
        progress=lambda line: console.print(line, highlight=False, markup=False),
        command=shlex.join(["celltune", "bench", *_bench_args(data, out, minutes, seeds, recipes,
                                                             split, group)]),
    )
    console.print(render_markdown(result), highlight=False, markup=False)


def _bench_args(data: Path, out: Path, minutes: float, seeds: str, recipes: str,
                split: Path | None, group: str | None) -> list[str]:
    """The command line that reproduces a benchmark, for its report."""
    args = [str(data), "--out", str(out), "--minutes", f"{minutes:g}", "--seeds", seeds,
            "--recipes", recipes]
    args += ["--split", str(split)] if split else []
    return args + (["--group", group] if group else [])
