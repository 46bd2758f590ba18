"""``celltune predict`` and ``celltune export``: use a trained run (part of the command line).

The functions are registered as commands by :mod:`celltune.cli`; each parses its options,
calls one library function and prints the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from celltune.runtime import tune_allocator

Opt = typer.Option
Arg = typer.Argument


# typer reads every option from this signature, so it grows with the options.
def predict(
    run: Annotated[Path, Arg(help="Run folder (config.yaml, checkpoints/).")],
    inputs: Annotated[list[str], Arg(help="Image files, folders or glob patterns (quote globs).")],
    out: Annotated[Path, Opt("--out", help="Output folder.")],
    tile: Annotated[int | None, Opt(help="Tile side in pixels (default: the run's).")] = None,
    overlap: Annotated[
        float | None, Opt(help="Fraction of a tile shared with its neighbour.")
    ] = None,
    batch_size: Annotated[int | None, Opt(help="Tiles per forward pass; bounds memory.")] = None,
    tta: Annotated[bool, Opt(help="Average over 4 flips (4x slower).")] = False,
    instances: Annotated[str | None, Opt(
        help="Instance labels: watershed, components or none (default: the run's tuned step).")
    ] = None,
    min_size: Annotated[int | None, Opt(
        help="Smallest cell kept, in pixels (default: the run's tuned value).")] = None,
    save_prob: Annotated[
        bool, Opt(help="Also write <stem>_prob.tif (float32 probability).")
    ] = False,
    overlay: Annotated[bool, Opt(help="Write <stem>_overlay.png.")] = True,
    geojson: Annotated[bool, Opt("--geojson", help=(
        "Also write <stem>_cells.geojson: cell outlines with their measurements, for QuPath "
        "(File > Import objects from file); pixel units, origin at the top-left."))] = False,
    cells_csv: Annotated[bool, Opt("--csv", help=(
        "Also write <stem>_cells.csv: per cell label, area, centroid, mean intensity, "
        "eccentricity, perimeter, axis lengths (pixels)."))] = False,
    threshold: Annotated[float | None, Opt(
        help="Override the run's probability threshold (binary heads).")] = None,
    checkpoint: Annotated[str, Opt(help="Checkpoint: best or last.")] = "best",
    device: Annotated[str, Opt(help="cpu, cuda or auto.")] = "auto",
    overwrite: Annotated[bool, Opt(help="Replace existing outputs.")] = False,
    progress: Annotated[bool, Opt(help="Show progress bars.")] = True,
    workers: Annotated[int, Opt(help=(
        "Parallel workers, local Dask processes (1 = this process): slides' blocks, and "
        "ordinary files, one file per worker at a time."))] = 1,
    scheduler: Annotated[str | None, Opt(help=(
        "Address of a running Dask scheduler, e.g. tcp://10.0.0.5:8786, whose workers predict "
        "slides' blocks and files (they must see the inputs and --out at the same paths)."))
    ] = None,
    pixel_size: Annotated[float | None, Opt(help=(
        "Slides: µm per pixel where the slide's metadata has none."))] = None,
    block: Annotated[int, Opt(help="Slides: block side in pixels (memory per worker).")] = 1024,
    margin: Annotated[int, Opt(help=(
        "Slides: context around a block for labelling; wider than the largest cell."))] = 128,
    in_place: Annotated[bool, Opt(help=(
        "Slides: write labels into the input OME-Zarr instead of OUT/<stem>.zarr."))] = False,
    resume: Annotated[bool, Opt(help=(
        "Skip what an interrupted call with the same settings finished: files with all "
        "their outputs, slides, and slides' blocks."))] = False,
) -> None:
    """Segment images of any size with a trained run; write masks, labels, overlays, counts.

    Per image: <stem>_mask.tif (uint8, 0 background / 255 foreground), <stem>_labels.tif
    (int32 instances), <stem>_overlay.png, optionally <stem>_prob.tif, <stem>_cells.csv
    (--csv) and <stem>_cells.geojson (--geojson; --csv and --geojson need instances); plus
    counts.csv and predict_args.json. Unreadable files are reported and skipped; the exit
    code is 1 if any input failed. --workers N (or --scheduler) predicts N files at once on
    a local Dask cluster; --resume skips files whose outputs are complete.

    Examples:

      celltune predict runs/unet images/ "more/*.tif" --out predictions --tile 512 --tta

      celltune predict runs/unet images/ --out predictions --geojson --csv

      celltune predict runs/unet slide.ome.zarr --out predictions --workers 2 --resume

      celltune predict runs/unet "plates/**/*.tif" --out predictions --workers 4

    Whole slides (*.zarr OME-Zarr folders, *.ome.tif) are predicted block by block into
    OUT/<stem>.zarr/labels/cells (NGFF labels; --in-place: into the input Zarr), plus
    OUT/<stem>_labels.ome.tif for an OME-TIFF; --threshold, --tta, --tile, --instances and
    --min-size apply to them too (--instances none: labels/mask), and --geojson / --csv write
    OUT/<stem>_cells.geojson / .csv from the finished labels; see the README's "Whole
    slides".
    """
    from celltune.inference.batch import predict_files
    from celltune.ome import is_slide

    tune_allocator()
    console = Console()
    slides = [i for i in inputs if is_slide(i)]
    if slides:
        options = dict(workers=workers, scheduler=scheduler, pixel_size=pixel_size, block=block,
                       margin=margin, in_place=in_place, resume=resume, save_prob=save_prob,
                       overwrite=overwrite, device=device, checkpoint=checkpoint, tile=tile,
                       overlap=overlap, batch_size=batch_size, tta=tta, threshold=threshold,
                       instances=instances, min_size=min_size, geojson=geojson,
                       cells_csv=cells_csv)
        ok = _predict_slides(run, slides, out, options, console, progress)
        inputs = [i for i in inputs if not is_slide(i)]
        if not inputs:
            if not ok:
                raise typer.Exit(1)
            return
    result = predict_files(
        run, inputs, out, instances=instances, min_size=min_size, save_prob=save_prob,
        overlay=overlay, geojson=geojson, cells_csv=cells_csv, overwrite=overwrite, tile=tile,
        overlap=overlap, batch_size=batch_size, tta=tta, threshold=threshold, device=device,
        checkpoint=checkpoint, progress=progress, console=console, workers=workers,
        scheduler=scheduler, resume=resume,
    )
    style = "green" if result.ok else "bold red"
    console.print(f"[{style}]{result.summary()}[/]", highlight=False, soft_wrap=True)
    if not result.ok:
        raise typer.Exit(1)


def _predict_slides(run: Path, slides: list[str], out: Path, options: dict, console: Console,
                    progress: bool) -> bool:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from celltune.inference.slides import predict_slides

    with Progress("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, disable=not progress) as bar:
        tasks: dict[str, int] = {}

        def reporter(kind: str):
            def report(name: str, done: int, total: int) -> None:
                key = f"{name} {kind}"
                if key not in tasks:
                    tasks[key] = bar.add_task(key, total=total)
                bar.update(tasks[key], completed=done)
            return report

        batch = predict_slides(run, slides, out, on_block=reporter("blocks"),
                               on_cells=reporter("cell tables"), **options)
    for result in batch.slides:
        what = "mask" if result.cells is None else f"{result.cells} cells"
        tables = "".join(f", {f.name}" for k, f in result.extra.items() if k != "tiff")
        console.print(f"{result.path.name}: {what} in {result.seconds:.1f} s -> "
                      f"{result.labels}{tables}", highlight=False, soft_wrap=True)
    style = "green" if batch.ok else "bold red"
    console.print(f"[{style}]{batch.summary()}[/]", highlight=False, soft_wrap=True)
    return batch.ok


def export(
    run: Annotated[Path, Arg(help="Run folder (config.yaml, checkpoints/).")],
    format: Annotated[str, Opt("--format", help="onnx, torchscript or bioimageio.")] = "onnx",
    out: Annotated[Path | None, Opt(help=(
        "File to write (default: RUN/export/model.onnx, .pt, or model.zip for bioimageio)."))
    ] = None,
    opset: Annotated[int, Opt(help="ONNX opset version.")] = 17,
    size: Annotated[str | None, Opt(
        help="Fixed input size HxW instead of dynamic height and width.")] = None,
    logits: Annotated[
        bool, Opt(help="Export raw logits instead of the foreground probability.")
    ] = False,
    author: Annotated[list[str] | None, Opt(
        help="bioimageio: an author of the model (repeat for several).")] = None,
    cite: Annotated[list[str] | None, Opt(
        help="bioimageio: a citation 'TEXT|DOI' or 'TEXT|https://URL' (repeatable).")] = None,
    license: Annotated[str, Opt(help="bioimageio: SPDX licence of the weights.")] = "MIT",
    checkpoint: Annotated[str, Opt(help="Checkpoint: best or last.")] = "best",
    overwrite: Annotated[bool, Opt(help="Replace an existing export.")] = False,
) -> None:
    """Export a run's network to ONNX or TorchScript, or as a bioimage.io model package.

    The exported graph takes (N, C, H, W) float32 images already percentile-normalised to
    [0, 1] (H and W multiples of 32) and returns the foreground probability (N, 1, H, W); any
    ImageNet normalisation is inside the graph. <name>.json beside it holds the threshold,
    head, channels, normalisation and size divisor. The export is checked against PyTorch.

    --format bioimageio writes a zip for Fiji/deepImageJ, ilastik, QuPath and napari:
    TorchScript, ONNX and state-dict weights, the percentile normalisation as preprocessing,
    a validation image as test tensors and a README with the run's numbers (needs
    pip install "celltune[bioimageio]").

    Examples:

      celltune export runs/unet --format onnx --out deploy/unet.onnx

      celltune export runs/unet --format bioimageio --out model.zip --author "Ada Lovelace"
    """
    from celltune.inference.export import export_run, parse_size

    if format.lower() == "bioimageio":
        from celltune.errors import ConfigError
        from celltune.integrations.bioimageio import export_bioimageio

        if logits:
            raise ConfigError("--logits does not apply to --format bioimageio (its output is "
                              "the foreground probability).")

        result = export_bioimageio(
            run, out, authors=author or (), cite=cite or (), license=license,
            size=parse_size(size), checkpoint=checkpoint, overwrite=overwrite,
        )
    else:
        result = export_run(run, format=format, out=out, opset=opset, size=parse_size(size),
                            logits=logits, checkpoint=checkpoint, overwrite=overwrite)
    Console().print(result.summary(), highlight=False, soft_wrap=True)
