"""The ``celltune`` command line: parse arguments, call the library, print results.

No logic lives here. Heavy libraries are imported inside the commands so that
``celltune --help`` answers quickly.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

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


@app.command("models")
def models_cmd(
    size: Annotated[int, typer.Option(help="Input side for the GFLOPs column.")] = 256,
) -> None:
    """List the registered models: parameters, GFLOPs, input-size rule, default weights.

    Example:

      celltune models
    """
    from rich.table import Table

    from celltune.models import FLOP_CONVENTION, models_table

    table = Table(title=f"celltune models (GFLOPs at 1×{size}×{size}; {FLOP_CONVENTION})")
    rows = models_table(size=size)
    for column in ("name", "params (M)", "GFLOPs", "input size", "study weights", "about"):
        table.add_column(column, justify="right" if column in ("params (M)", "GFLOPs") else "left")
    for r in rows:
        table.add_row(
            r["name"], f"{r['params'] / 1e6:.2f}", f"{r['gflops']:.1f}", str(r["input_rule"]),
            str(r["default_weights"]), str(r.get("description", "")),
        )
    console = _console()
    console.print(table)
    console.print(
        "Study weights are what the published study used; `celltune train` starts from "
        "--weights none unless told otherwise, so it never needs the network."
    )


def _train_overrides(**values: Any) -> dict[str, Any]:
    """CLI options that were given, as a nested config override."""
    sections = {
        "data": {"root": "data", "filter": "filter", "channels": "channels", "crop": "crop"},
        "model": {"name": "model", "weights": "weights", "head": "head", "encoder": "encoder"},
        "train": {
            "epochs": "epochs", "max_time": "max_time", "batch_size": "batch_size", "lr": "lr",
            "loss": "loss", "aug": "aug", "seed": "seed", "accelerator": "accelerator",
            "devices": "devices", "num_nodes": "num_nodes", "strategy": "strategy",
            "precision": "precision", "patience": "patience", "compile": "compile_model",
        },
    }
    out: dict[str, Any] = {}
    for section, keys in sections.items():
        given = {k: values[v] for k, v in keys.items() if values.get(v) is not None}
        if given:
            out[section] = given
    if values.get("devices") is not None and str(values["devices"]).isdigit():
        out["train"]["devices"] = int(values["devices"])
    return out


@app.command()
def train(
    config: Annotated[
        Path | None, typer.Argument(help="Run config YAML (defaults if omitted).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to create.")] = Path(
        "runs/run"
    ),
    data: Annotated[
        Path | None, typer.Option(help="Dataset root; omitted = synthetic data.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model name (see `celltune models`).")] = None,
    weights: Annotated[
        str | None, typer.Option(help="Encoder weights: none, imagenet, or a file path.")
    ] = None,
    encoder: Annotated[str | None, typer.Option(help="Encoder of SMP models.")] = None,
    head: Annotated[str | None, typer.Option(help="binary or two_class.")] = None,
    aug: Annotated[str | None, typer.Option(help="Augmentation: none, aug1, aug2.")] = None,
    loss: Annotated[str | None, typer.Option(help="bce_dice, dice, focal, bce, ce.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs.")] = None,
    max_time: Annotated[
        float | None, typer.Option(help="Wall-clock budget in minutes.")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Crops per batch.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (AdamW).")] = None,
    crop: Annotated[int | None, typer.Option(help="Training crop side (multiple of 32).")] = None,
    patience: Annotated[
        int | None, typer.Option(help="Stop after this many epochs without val Dice gain.")
    ] = None,
    filter: Annotated[str | None, typer.Option(help="Image filter: study or all.")] = None,
    channels: Annotated[int | None, typer.Option(help="1 (grayscale) or 3 (RGB).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for splits, crops, init.")] = None,
    accelerator: Annotated[str | None, typer.Option(help="auto, cpu, gpu.")] = None,
    devices: Annotated[str | None, typer.Option(help="Devices per node (auto or a count).")] = None,
    num_nodes: Annotated[int | None, typer.Option(help="Number of nodes.")] = None,
    strategy: Annotated[str | None, typer.Option(help="Lightning strategy (auto, ddp...).")] = None,
    precision: Annotated[
        str | None, typer.Option(help="auto, 32-true, bf16-mixed, 16-mixed.")
    ] = None,
    compile_model: Annotated[
        bool | None,
        typer.Option(
            "--compile/--no-compile",
            help="torch.compile the network (about a minute of compiling first; pays on long "
            "runs).",
        ),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run folder.")] = False,
    evaluate: Annotated[
        bool, typer.Option(help="After training, choose the threshold and evaluate on test.")
    ] = True,
) -> None:
    """Train a model, choose its threshold on validation and evaluate it on test.

    Examples:

      celltune train --data data/neurips --model unet --weights imagenet --aug aug1 --out runs/unet

      celltune train configs/demo.yaml --out runs/demo --epochs 5

      celltune train --out runs/unet --resume
    """
    from celltune.config import load_run_config, run_config_from_dict
    from celltune.pipeline import run_pipeline

    overrides = _train_overrides(**locals())
    base = load_run_config(config).model_dump(mode="json") if config else {}
    for section, values in overrides.items():
        base.setdefault(section, {}).update(values)
    if base.get("name") in (None, "run"):
        base["name"] = out.name
    cfg = run_config_from_dict(base, str(config or "command line"))
    console = _console()
    result = run_pipeline(
        cfg, out, resume=resume, overwrite=overwrite, evaluate_split="test" if evaluate else None
    )
    if result.extra.get("rank"):  # a DDP worker process: rank 0 reports
        return
    if result.summary:
        s = result.summary
        console.print(
            f"[bold]{s.get('model', cfg.model.name)}[/]: threshold {result.threshold:.2f}, test Dice "
            f"{s['dice']:.3f}, IoU {s['iou']:.3f}, F1@0.5 {s['f1_iou50']:.3f} "
            f"({s['n_images']} images)"
        )
    console.print(f"Run folder: [bold]{result.run_dir}[/] ({result.train_seconds / 60:.1f} min)")


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run folder made by `celltune train`.")],
    data: Annotated[
        Path | None, typer.Option(help="Dataset root; omitted = the run's own splits.")
    ] = None,
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    instances: Annotated[
        str, typer.Option(help="Instance method for F1: watershed or components.")
    ] = "watershed",
) -> None:
    """Score a trained run on a split: Dice, IoU (per image and pooled, 95% CI), instance F1.

    Writes RUN/eval/SPLIT/per_image.csv and summary.json.

    Example:

      celltune evaluate runs/unet --data data/neurips --split test
    """
    from celltune.evaluation.evaluate import evaluate_run

    console = _console()
    s = evaluate_run(run, split=split, data_root=data, instance_method=instances)
    lo, hi = s["dice_ci95"]
    console.print(
        f"{split}: {s['n_images']} images, threshold {s['threshold']:.2f}: Dice {s['dice']:.3f} "
        f"[95% CI {lo:.3f}-{hi:.3f}], IoU {s['iou']:.3f}, pooled Dice {s['dice_pooled']:.3f}, "
        f"F1@0.5 {s['f1_iou50']:.3f}"
    )
    console.print(s["empty_rule"])
    for failure in s["failures"]:
        console.print(f"[red]skipped[/] {failure['name']}: {failure['error']}")
    console.print(f"Results: [bold]{Path(run) / 'eval' / split}[/]")
    if s["failures"]:
        raise typer.Exit(1)


@app.command()
def report(
    study_dir: Annotated[Path, typer.Argument(help="Study folder (one run folder per row).")],
    title: Annotated[
        str | None, typer.Option(help="Report title (default: the study's name).")
    ] = None,
    images: Annotated[int, typer.Option(help="Test images in the mask comparison grid.")] = 4,
) -> None:
    """Regenerate results.md, results.csv, report.html and plots/ from a finished study folder.

    Rows, labels and paper numbers come from STUDY_DIR/study.yaml (written by `celltune study`).

    Without it, every sub-folder holding done.json is a row.

    Example:

      celltune report studies/demo
    """
    from celltune.report import regenerate, render_console

    console = _console()
    report = regenerate(study_dir, title=title, grid_images=images)
    render_console(report.results, console, report.paper, title=report.title)
    console.print(f"Report: [bold]{report.paths['html']}[/]")


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="Run folder (config.yaml, checkpoints/).")],
    inputs: Annotated[
        list[str], typer.Argument(help="Image files, folders or glob patterns (quote globs).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Output folder.")],
    tile: Annotated[
        int | None, typer.Option(help="Tile side in pixels (default: the run's).")
    ] = None,
    overlap: Annotated[
        float | None, typer.Option(help="Fraction of a tile shared with its neighbour.")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Tiles per forward pass; bounds memory.")
    ] = None,
    tta: Annotated[bool, typer.Option(help="Average over 4 flips (4x slower).")] = False,
    instances: Annotated[
        str, typer.Option(help="Instance labels: watershed, components or none.")
    ] = "watershed",
    min_size: Annotated[int, typer.Option(help="Smallest cell kept, in pixels.")] = 16,
    save_prob: Annotated[
        bool, typer.Option(help="Also write <stem>_prob.tif (float32 probability).")
    ] = False,
    overlay: Annotated[bool, typer.Option(help="Write <stem>_overlay.png.")] = True,
    threshold: Annotated[
        float | None,
        typer.Option(help="Override the run's probability threshold (binary heads)."),
    ] = None,
    checkpoint: Annotated[str, typer.Option(help="Checkpoint: best or last.")] = "best",
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Segment images of any size with a trained run; write masks, labels, overlays, counts.

    Per image: <stem>_mask.tif (uint8, 0 background / 255 foreground), <stem>_labels.tif
    (int32 instances), <stem>_overlay.png, optionally <stem>_prob.tif; plus counts.csv and
    predict_args.json. Unreadable files are reported and skipped; the exit code is 1 if any
    input failed.

    Example:

      celltune predict runs/unet images/ "more/*.tif" --out predictions --tile 512 --tta
    """
    from celltune.inference.batch import predict_files

    console = _console()
    result = predict_files(
        run, inputs, out, instances=instances, min_size=min_size, save_prob=save_prob,
        overlay=overlay, overwrite=overwrite, tile=tile, overlap=overlap, batch_size=batch_size,
        tta=tta, threshold=threshold, device=device, checkpoint=checkpoint, progress=progress,
        console=console,
    )
    style = "green" if result.ok else "bold red"
    console.print(f"[{style}]{result.summary()}[/]", highlight=False, soft_wrap=True)
    if not result.ok:
        raise typer.Exit(1)


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="Run folder (config.yaml, checkpoints/).")],
    format: Annotated[str, typer.Option("--format", help="onnx or torchscript.")] = "onnx",
    out: Annotated[
        Path | None,
        typer.Option(help="Model file to write (default: RUN/export/model.onnx or .pt)."),
    ] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset version.")] = 17,
    size: Annotated[
        str | None,
        typer.Option(help="Fixed input size HxW instead of dynamic height and width."),
    ] = None,
    logits: Annotated[
        bool, typer.Option(help="Export raw logits instead of the foreground probability.")
    ] = False,
    checkpoint: Annotated[str, typer.Option(help="Checkpoint: best or last.")] = "best",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing export.")] = False,
) -> None:
    """Export a run's network to ONNX or TorchScript, with a JSON of what the input needs.

    The exported graph takes (N, C, H, W) float32 images already percentile-normalised to
    [0, 1] (H and W multiples of 32) and returns the foreground probability (N, 1, H, W); any
    ImageNet normalisation is inside the graph. <name>.json beside it holds the threshold,
    head, channels, normalisation and size divisor. The export is checked against PyTorch.

    Example:

      celltune export runs/unet --format onnx --out deploy/unet.onnx
    """
    from celltune.inference.export import export_run, parse_size

    result = export_run(
        run, format=format, out=out, opset=opset, size=parse_size(size), logits=logits,
        checkpoint=checkpoint, overwrite=overwrite,
    )
    _console().print(result.summary(), highlight=False, soft_wrap=True)


@app.command()
def study(
    config: Annotated[Path, typer.Argument(help="Study config YAML (see configs/).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Study folder to create.")] = Path(
        "studies/study"
    ),
    data: Annotated[
        Path | None, typer.Option(help="Dataset root for every row (overrides the config).")
    ] = None,
    rows: Annotated[
        str | None, typer.Option(help="Comma-separated row names to run (default: all).")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Skip finished rows and continue an interrupted one.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing study folder.")] = False,
) -> None:
    """Train and evaluate every row of a study, then write results.md/csv and report.html.

    Examples:

      celltune study configs/neurips.yaml --data data/neurips --out studies/neurips

      celltune study configs/neurips.yaml --out studies/neurips --resume
    """
    from celltune.config import load_study_config
    from celltune.report import collect, render_console, study_meta
    from celltune.study import run_study

    cfg = load_study_config(config)
    if data is not None:
        cfg.defaults.data.root = data
    console = _console()
    selected = rows.split(",") if rows else None
    results = run_study(cfg, out, resume=resume, overwrite=overwrite, rows=selected,
                        console=console)
    from celltune.training.distributed import is_worker

    if is_worker():  # a DDP worker process: rank 0 reports
        return
    meta = study_meta(out)
    render_console(collect(out, [r.run_dir.name for r in results], meta.get("labels")),
                   console, paper=meta.get("paper"), title=meta.get("title"))
    console.print(f"Report: [bold]{out / 'report.html'}[/]")


def _one_line(exc: BaseException) -> str:
    """The user-facing sentence of an error.

    An error raised in a DataLoader worker process comes back wrapped ("Caught ... in
    DataLoader worker process 0. Original Traceback ..."); its last line holds the sentence.
    """
    text = str(exc).strip()
    if "\nOriginal Traceback" in text:
        last = text.splitlines()[-1]
        prefix = f"{type(exc).__module__}.{type(exc).__name__}: "
        text = last[len(prefix):] if last.startswith(prefix) else last
    return text


def _show_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
                  line: Any = None) -> None:
    """Warnings as one line on stderr, without the source line of the library."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(
        f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True
    )


def _fail(message: str, code: int) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def main() -> None:
    """Console-script entry point: user errors print one line and exit non-zero."""
    import warnings

    warnings.showwarning = _show_warning
    try:
        app()
    except CelltuneError as exc:
        if _DEBUG:
            raise
        _fail(_one_line(exc), exc.exit_code)
    except OSError as exc:  # disk full, permissions: the environment, not a bug
        if _DEBUG:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        _fail(f"{where}{exc.strerror or exc}.", 1)
    except KeyboardInterrupt:
        _console().print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
