"""The ``celltune`` command line: parse arguments, call the library, print results.

No logic lives here. Heavy libraries are imported inside the commands so that
``celltune --help`` answers quickly.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from celltune import __version__
from celltune.errors import CelltuneError

app = typer.Typer(
    name="celltune",
    help=(
        "Fine-tune, compare and deploy deep-learning models for cell segmentation.\n\n"
        "Examples:\n\n"
        "  celltune demo --out celltune-demo\n\n"
        "  celltune data synth data/synth --n 48 --size 256\n\n"
        "  celltune train --data data/synth --model unet --epochs 20 --out runs/unet\n\n"
        "  celltune predict runs/unet my_images/ --out predictions/"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
data_app = typer.Typer(
    help="Create, download and inspect datasets.\n\nExample:\n\n  celltune data summary data/synth",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")

_DEBUG = False


def _console():
    from rich.console import Console

    return Console()


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"celltune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Show version."),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show full tracebacks for errors.")
    ] = False,
) -> None:
    global _DEBUG
    _DEBUG = debug


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Output folder for data, runs and the report.")] = Path(
        "celltune-demo"
    ),
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
) -> None:
    """Run the main job on built-in synthetic data: generate, train, tune, evaluate, report.

    Example:

      celltune demo --out celltune-demo
    """
    from celltune.demo import run_demo

    run_demo(out, overwrite=overwrite, console=_console())


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Argument(help="Folder to create (images/ and labels/).")],
    n: Annotated[int, typer.Option(help="Number of images.")] = 48,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 256,
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same bytes.")] = 0,
    contact_sheet: Annotated[
        bool, typer.Option(help="Also write contact_sheet.png with every image and its outline.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing dataset folder.")] = False,
) -> None:
    """Write a synthetic microscopy dataset in the NeurIPS layout.

    Four modalities (fluorescence, phase contrast, brightfield, DIC), exact int16 instance labels.

    Example:

      celltune data synth data/synth --n 12 --size 256 --seed 3 --contact-sheet
    """
    from celltune.data.synthetic import write_dataset

    console = _console()
    result = write_dataset(out, n=n, size=size, seed=seed, overwrite=overwrite)
    console.print(f"Wrote {n} images and labels to [bold]{out}[/]")
    if contact_sheet:
        from celltune.data.synthetic import save_contact_sheet

        path = save_contact_sheet(out, Path(out) / "contact_sheet.png")
        console.print(f"Contact sheet: [bold]{path}[/]")
    del result


@data_app.command("summary")
def data_summary(
    root: Annotated[Path, typer.Argument(help="Dataset root (Zenodo, older or bare layout).")],
    json_output: Annotated[
        bool, typer.Option("--json", help="Print JSON instead of tables.")
    ] = False,
    pixels: Annotated[
        bool,
        typer.Option(help="Decode label files for cells per image and foreground fraction."),
    ] = True,
) -> None:
    """Count images per split, format, dtype, channels and size; what each filter keeps.

    Example:

      celltune data summary data/neurips --json
    """
    from celltune.data.summary import summarize

    summary = summarize(root, read_pixels=pixels)
    if json_output:
        import json

        typer.echo(json.dumps(summary.to_dict(), indent=1))
    else:
        summary.render(_console())


download_app = typer.Typer(
    help="Download public datasets.\n\nExample:\n\n  celltune data download neurips data/neurips",
    no_args_is_help=True,
)
data_app.add_typer(download_app, name="download")


@download_app.command("neurips")
def data_download_neurips(
    root: Annotated[Path, typer.Argument(help="Folder to download and unzip into.")],
    parts: Annotated[
        str, typer.Option(help="Comma-separated archives: training, tuning, testing.")
    ] = "training,tuning",
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    base_url: Annotated[
        str | None,
        typer.Option(help="Mirror holding the archives (default: the Zenodo record)."),
    ] = None,
) -> None:
    """Download the NeurIPS 2022 CellSeg archives from Zenodo (SHA-256 verified, resumable).

    A second run does nothing; an interrupted run resumes where it stopped.

    Example:

      celltune data download neurips data/neurips --parts training,tuning
    """
    from celltune.data.download import ZENODO_URL, download_neurips

    console = _console()
    archives = download_neurips(
        root, parts.split(","), base_url=base_url or ZENODO_URL, progress=progress, console=console
    )
    console.print(f"Ready: {len(archives)} archive(s) extracted into [bold]{root}[/]")


def main() -> None:
    """Console-script entry point: user errors print one line and exit non-zero."""
    try:
        app()
    except CelltuneError as exc:
        if _DEBUG:
            raise
        _console().print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _console().print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
