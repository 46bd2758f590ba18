"""The ``celltune`` command line: parse arguments, call one library function, print the result.

No logic lives here. Heavy libraries are imported inside the commands so that
``celltune --help`` answers quickly.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from celltune import __version__
from celltune.cli_compare import bench, report, study
from celltune.cli_data import data_app
from celltune.cli_deploy import export, predict
from celltune.errors import CelltuneError
from celltune.runtime import tune_allocator

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
# Command groups in their own modules: `celltune data ...`; report, study and bench, which
# compare models; predict and export, which use a trained run.
app.add_typer(data_app, name="data")

_DEBUG = False
Opt = typer.Option
Arg = typer.Argument


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"celltune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, Opt("--version", callback=_version_callback, is_eager=True,
                                 help="Show version.")] = False,
    debug: Annotated[bool, Opt("--debug", help="Show full tracebacks for errors.")] = False,
) -> None:
    global _DEBUG
    _DEBUG = debug


@app.command()
def demo(
    out: Annotated[Path, Opt(help="Output folder for data, runs and the report.")] = Path(
        "celltune-demo"
    ),
    overwrite: Annotated[bool, Opt(help="Replace an existing output folder.")] = False,
) -> None:
    """Run the main job on built-in synthetic data: generate, train, tune, evaluate, report.

    Example:

      celltune demo --out celltune-demo
    """
    from celltune.workflows.demo import run_demo

    tune_allocator()
    run_demo(out, overwrite=overwrite, console=Console())


@app.command("models")
def models_cmd(size: Annotated[int, Opt(help="Input side for the GFLOPs column.")] = 256) -> None:
    """List the registered models: parameters, GFLOPs, input-size rule, default weights.

    Example:

      celltune models
    """
    from celltune.models import models_table
    from celltune.report.console import MODELS_NOTE
    from celltune.report.console import models_table as render_models

    console = Console()
    console.print(render_models(models_table(size=size), size))
    console.print(MODELS_NOTE)


# Typer declares every option as a parameter, so this signature is long; the body is short.
@app.command()
def train(
    config: Annotated[Path | None, Arg(help="Run config YAML (defaults if omitted).")] = None,
    out: Annotated[Path, Opt("--out", "-o", help="Run folder to create.")] = Path("runs/run"),
    data: Annotated[Path | None, Opt(help="Dataset root; omitted = synthetic data.")] = None,
    model: Annotated[str | None, Opt(help="Model name (see `celltune models`).")] = None,
    weights: Annotated[str | None, Opt(help="Encoder weights: none, imagenet, or a file path.")
                       ] = None,
    encoder: Annotated[str | None, Opt(help="Encoder of SMP models.")] = None,
    head: Annotated[str | None, Opt(
        help="binary, two_class, boundary (background/interior/boundary: touching cells "
        "are separated by the predicted boundaries) or distance (foreground + distance to "
        "each cell's border: cells grow from the distance peaks).")] = None,
    aug: Annotated[str | None, Opt(help="Augmentation: none, aug1, aug2.")] = None,
    loss: Annotated[str | None, Opt(help="bce_dice, dice, focal, bce, ce.")] = None,
    gaps: Annotated[bool | None, Opt(
        "--gaps/--no-gaps",
        help="Binary head: learn a gap where touching cells meet (splits them).")] = None,
    epochs: Annotated[int | None, Opt(
        help="Epochs; default 40, more for small sets (a cap when --max-time is given).")] = None,
    max_time: Annotated[float | None, Opt(
        help="Train for this many minutes: the schedule is fitted to fill them.")] = None,
    batch_size: Annotated[int | None, Opt(help="Crops per batch.")] = None,
    lr: Annotated[float | None, Opt(help="Peak learning rate (AdamW).")] = None,
    crop: Annotated[int | None, Opt(
        help="Training crop side (multiple of 32); default 256.")] = None,
    patience: Annotated[
        int | None, Opt(help="Stop after this many epochs without val Dice gain.")
    ] = None,
    filter: Annotated[str | None, Opt(help="Image filter: all (default) or study (tif only).")
                      ] = None,
    val: Annotated[float | None, Opt(
        help="Validation images: a count (4) or a share (0.2); default about 15%, 2 to 20.")
    ] = None,
    channels: Annotated[int | None, Opt(
        help="1 (grayscale, default) or 3 (RGB).")] = None,
    resize: Annotated[float | None, Opt(
        help="Rescale images on load (1 = off); default: objects wider than 48 px to 32 px.")
    ] = None,
    seed: Annotated[int | None, Opt(help="Seed for splits, crops, init.")] = None,
    accelerator: Annotated[str | None, Opt(help="auto, cpu, gpu.")] = None,
    devices: Annotated[str | None, Opt(help="Devices per node (auto or a count).")] = None,
    num_nodes: Annotated[int | None, Opt(help="Number of nodes.")] = None,
    strategy: Annotated[str | None, Opt(help="Lightning strategy (auto, ddp...).")] = None,
    precision: Annotated[str | None, Opt(help="auto, 32-true, bf16-mixed, 16-mixed.")] = None,
    compile_model: Annotated[bool | None, Opt(
        "--compile/--no-compile",
        help="torch.compile the network (about a minute of compiling first; pays on long runs).",
    )] = None,
    resume: Annotated[bool, Opt(help="Continue an interrupted run.")] = False,
    overwrite: Annotated[bool, Opt(help="Replace an existing run folder.")] = False,
    evaluate: Annotated[
        bool, Opt(help="After training, choose the threshold and evaluate on test.")
    ] = True,
) -> None:
    """Train a model, choose its threshold on validation and evaluate it on test.

    Examples:

      celltune train --data data/neurips --model unet --weights imagenet --aug aug1 --out runs/unet

      celltune train --data data/my_cells --max-time 12 --out runs/mine

      celltune train configs/demo.yaml --out runs/demo --epochs 5

      celltune train --out runs/unet --resume

    Settings not given (filter, validation images, rescaling, epochs) are
    derived from the training images and saved with their reasons in config.yaml.
    """
    from celltune.config import run_config_with_overrides
    from celltune.workflows.run import run_pipeline

    overrides = {
        "data.root": data, "data.filter": filter, "data.val": val, "data.channels": channels,
        "data.crop": crop, "data.resize": resize,
        "model.name": model, "model.weights": weights, "model.head": head,
        "model.encoder": encoder, "train.epochs": epochs, "train.max_time": max_time,
        "train.batch_size": batch_size, "train.lr": lr, "train.loss": loss,
        "train.gaps": gaps, "train.aug": aug,
        "train.seed": seed, "train.accelerator": accelerator, "train.devices": devices,
        "train.num_nodes": num_nodes, "train.strategy": strategy,
        "train.precision": precision, "train.patience": patience,
        "train.compile": compile_model,
    }
    cfg = run_config_with_overrides(config, overrides, default_name=out.name)
    tune_allocator()
    result = run_pipeline(cfg, out, resume=resume, overwrite=overwrite,
                          evaluate_split="test" if evaluate else None)
    if result.worker:
        return
    console = Console()
    if result.summary:
        s = result.summary
        console.print(
            f"[bold]{s.get('model', cfg.model.name)}[/]: threshold {result.threshold:.2f}, test "
            f"Dice {s['dice']:.3f}, IoU {s['iou']:.3f}, F1@0.5 {s['f1_iou50']:.3f} "
            f"({s['n_images']} images)"
        )
    console.print(f"Run folder: [bold]{result.run_dir}[/] ({result.train_seconds / 60:.1f} min)")


@app.command()
def evaluate(
    run: Annotated[Path, Arg(help="Run folder made by `celltune train`.")],
    data: Annotated[Path | None, Opt(help="Dataset root; omitted = the run's own splits.")] = None,
    split: Annotated[str, Opt(help="train, val or test.")] = "test",
    instances: Annotated[str | None, Opt(
        help="Instance method for F1: watershed or components (default: the run's tuned step).")
    ] = None,
    retune: Annotated[bool, Opt(
        help="First choose the threshold and the instance step again on the run's own "
             "validation split (rewrites threshold.json and postprocess.json).")] = False,
) -> None:
    """Score a trained run on a split: Dice, IoU (per image and pooled, 95% CI), instance F1.

    Writes RUN/eval/SPLIT/per_image.csv and summary.json.

    Examples:

      celltune evaluate runs/unet --data data/neurips --split test

      celltune evaluate runs/unet --retune    # re-choose the threshold and instance step
    """
    from celltune.evaluation.evaluate import evaluate_run, tune_run
    from celltune.rundir import RunDir

    tune_allocator()
    console = Console()
    predictor = None
    if retune:
        threshold, step, predictor = tune_run(run)
        console.print(f"validation: threshold {threshold.best_threshold:.2f} (Dice "
                      f"{threshold.best_dice:.3f}), instance step {step.best} (F1@0.5 "
                      f"{step.best_f1:.3f} over its cells)")
    s = evaluate_run(run, split=split, data_root=data, instance_method=instances,
                     predictor=predictor)
    lo, hi = s["dice_ci95"]
    console.print(
        f"{split}: {s['n_images']} images, threshold {s['threshold']:.2f}: Dice {s['dice']:.3f} "
        f"[95% CI {lo:.3f}-{hi:.3f}], IoU {s['iou']:.3f}, pooled Dice {s['dice_pooled']:.3f}, "
        f"F1@0.5 {s['f1_iou50']:.3f} (median {s['f1_iou50_median']:.3f}, precision "
        f"{s['precision_iou50']:.3f}, recall {s['recall_iou50']:.3f}), F1@0.5:0.9 "
        f"{s['f1_mean_50_90']:.3f}, cell count error {100 * s['count_error_relative']:.0f}%"
    )
    console.print(s["empty_rule"])
    for failure in s["failures"]:
        console.print(f"[red]skipped[/] {failure['name']}: {failure['error']}")
    console.print(f"Results: [bold]{RunDir(run).eval_dir(split)}[/]")
    if s["failures"]:
        raise typer.Exit(1)


app.command()(report)
app.command()(predict)
app.command()(export)
app.command()(study)
app.command()(bench)


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


def _stderr_line(markup: str, text: str) -> None:
    Console(stderr=True).print(f"{markup} {escape(text)}", highlight=False, soft_wrap=True)


def _show_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
                  line: Any = None) -> None:
    """Warnings as one line on stderr, without the source line of the library."""
    _stderr_line("[yellow]warning:[/]", str(message))


def _fail(message: str, code: int) -> None:
    _stderr_line("[bold red]error:[/]", message)
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
        Console().print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
