"""``celltune data``: create, download and inspect datasets (part of the command line).

Like :mod:`celltune.cli`, each command parses its options, calls one library function and
prints the result; heavy libraries are imported inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

Opt = typer.Option
Arg = typer.Argument

data_app = typer.Typer(
    help="Create, download and inspect datasets.\n\nExample:\n\n  celltune data summary data/synth",
    no_args_is_help=True,
)
download_app = typer.Typer(
    help="Download public datasets.\n\nExample:\n\n  celltune data download neurips data/neurips",
    no_args_is_help=True,
)
data_app.add_typer(download_app, name="download")


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, Arg(help="Folder to create (images/ and labels/).")],
    n: Annotated[int, Opt(help="Number of images.")] = 48,
    size: Annotated[int, Opt(help="Image side in pixels.")] = 256,
    seed: Annotated[int, Opt(help="Random seed; same seed, same bytes.")] = 0,
    contact_sheet: Annotated[
        bool, Opt(help="Also write contact_sheet.png with every image and its outline.")
    ] = False,
    overwrite: Annotated[bool, Opt(help="Replace an existing dataset folder.")] = False,
) -> None:
    """Write a synthetic microscopy dataset in the NeurIPS layout.

    Four modalities (fluorescence, phase contrast, brightfield, DIC), exact int16 instance labels.

    Example:

      celltune data synth data/synth --n 12 --size 256 --seed 3 --contact-sheet
    """
    from celltune.data.synthetic import write_dataset

    console = Console()
    write_dataset(out, n=n, size=size, seed=seed, overwrite=overwrite)
    console.print(f"Wrote {n} images and labels to [bold]{out}[/]")
    if contact_sheet:
        from celltune.data.synthetic import contact_sheet_panels
        from celltune.viz.datasets import contact_sheet as draw_contact_sheet
        from celltune.viz.datasets import save_png

        path = save_png(draw_contact_sheet(contact_sheet_panels(out)),
                        Path(out) / "contact_sheet.png")
        console.print(f"Contact sheet: [bold]{path}[/]")


@data_app.command("summary")
def data_summary(
    root: Annotated[Path, Arg(help="Dataset root (Zenodo, older or bare layout).")],
    json_output: Annotated[bool, Opt("--json", help="Print JSON instead of tables.")] = False,
    pixels: Annotated[
        bool, Opt(help="Decode labels and images: label statistics, the fingerprint and the "
                       "settings `celltune train` derives from it.")
    ] = True,
) -> None:
    """Count images per split, format, dtype, channels and size; what each filter keeps.

    With pixels: the fingerprint of the training images (object size, colour, foreground,
    touching objects) and the settings `celltune train` derives from it.

    Example:

      celltune data summary data/neurips --json
    """
    from celltune.data.summary import summarize

    summary = summarize(root, read_pixels=pixels)
    if json_output:
        import json

        typer.echo(json.dumps(summary.to_dict(), indent=1))
        return
    from celltune.report.console import data_summary_tables

    console = Console()
    for table in data_summary_tables(summary):
        console.print(table)


@download_app.command("neurips")
def data_download_neurips(
    root: Annotated[Path, Arg(help="Folder to download and unzip into.")],
    parts: Annotated[
        str, Opt(help="Comma-separated archives: training, tuning, testing.")
    ] = "training,tuning",
    progress: Annotated[bool, Opt(help="Show a progress bar.")] = True,
    base_url: Annotated[
        str | None, Opt(help="Mirror holding the archives (default: the Zenodo record).")
    ] = None,
) -> None:
    """Download the NeurIPS 2022 CellSeg archives from Zenodo (SHA-256 verified, resumable).

    A second run does nothing; an interrupted run resumes where it stopped.

    Example:

      celltune data download neurips data/neurips --parts training,tuning
    """
    from functools import partial

    from celltune.data.download import ZENODO_URL, download_neurips
    from celltune.report.console import download_bar

    console = Console()
    archives = download_neurips(root, parts.split(","), base_url=base_url or ZENODO_URL,
                                progress=progress, bar=partial(download_bar, console=console),
                                log=lambda line: console.print(line, highlight=False))
    console.print(f"Ready: {len(archives)} archive(s) extracted into [bold]{root}[/]")
