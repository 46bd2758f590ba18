"""Training and inference throughput of celltune against naive PyTorch, in one run.

For every model, on one machine in one run: training images/s through celltune's real path
(``build_loaders`` -> ``SegmentationModule`` -> ``build_trainer``'s ``Trainer.fit``) and through
a naive fp32 loop (in a process of its own: ``_naive.py``); inference megapixels/s of
``Predictor.predict_proba`` and of naive ``model(x)``; achieved GFLOP/s
(``torch.utils.flop_counter``) over a matmul peak timed in the same run; and the training
DataLoader alone. :data:`METHOD_NOTES` says exactly how each number is taken; it is printed
under the table in BENCHMARKS.md.

Example:
    python benchmarks/throughput.py                        # all models, 8x256², writes BENCHMARKS.md
    python benchmarks/throughput.py --models unet --steps 5 --out /tmp/bench.md
    python benchmarks/throughput.py --quick                # tiny models at 64², seconds
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    command_line,
    interleaved_medians,
    machine_info,
    markdown_table,
    measure_peaks,
    precision_key,
    print_table,
    resolve_device,
    steady_rate,
    synchronize,
    timestamp,
    versions,
    write_section,
)
from _naive import NaiveProcess, build_model, inference_pass, prepare_inference, training_rate

from celltune.config import RunConfig
from celltune.data.samples import Sample, Splits
from celltune.inference.predict import Predictor
from celltune.io import normalize
from celltune.rundir import RunDir
from celltune.runtime import tune_allocator
from celltune.training.fit import auto_precision, build_loaders, build_trainer, quiet_lightning
from celltune.training.module import SegmentationModule

ALL_MODELS = ("unet", "unetplusplus", "pspnet", "swin_unet", "unet_plain_bn")
SECTION = "throughput"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
#: Training images in the NeurIPS study, for the "one epoch" estimate.
NEURIPS_TRAIN_IMAGES = 491
#: Defaults of the size options, for a full run and for ``--quick``.
FULL = dict(batch_size=8, size=256, steps=10, warmup=2, repeats=3, image_size=1024)
QUICK = dict(batch_size=4, size=64, steps=3, warmup=1, repeats=1, image_size=128)


@dataclass
class Settings:
    """Everything that determines what is measured."""

    models: list[str]
    batch_size: int
    size: int
    steps: int
    warmup: int
    repeats: int
    image_size: int
    images: int
    image_side: int
    workers: int
    tiny: bool
    device: torch.device


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(ALL_MODELS), help="registered models")
    parser.add_argument("--batch-size", type=int, default=None, help="images per step (8)")
    parser.add_argument("--size", type=int, default=None, help="crop and tile side (256)")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (10)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed first steps (2)")
    parser.add_argument("--repeats", type=int, default=None, help="timed inference passes (3)")
    parser.add_argument("--image-size", type=int, default=None, help="inference image side (1024)")
    parser.add_argument(
        "--workers", type=int, default=0, help="DataLoader workers (config default 0)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny models, 64², few steps")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="markdown file; 'none' to skip")
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Fill unset options from the full or the ``--quick`` defaults."""
    base = QUICK if args.quick else FULL
    picked = {k: v if getattr(args, k) is None else getattr(args, k) for k, v in base.items()}
    for key in ("batch_size", "size", "steps", "warmup", "repeats"):
        if picked[key] < 1:
            raise SystemExit(f"--{key.replace('_', '-')} must be at least 1.")
    if picked["size"] % 32 or picked["image_size"] % picked["size"]:
        raise SystemExit("--size must be a multiple of 32 and divide --image-size.")
    return Settings(
        models=list(args.models),
        images=4 if args.quick else 8,  # few distinct images keep the set-up short
        image_side=2 * picked["size"],
        workers=args.workers,
        tiny=args.quick,
        device=resolve_device(args.device),
        **picked,
    )


class StepTimer(L.Callback):
    """Records the wall-clock time at the end of every training batch (after the optimiser)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stamps: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        synchronize(self.device)
        self.stamps.append(time.perf_counter())


def write_training_data(root: Path, s: Settings) -> Splits:
    """Synthetic 16-bit images with labels; the first image is the validation split."""
    from celltune.data.synthetic import write_dataset

    paths = write_dataset(root, n=s.images + 1, size=s.image_side, seed=0, png_fraction=0.0)
    samples = [Sample(p, root / "labels" / f"{p.stem}_label.tiff") for p in paths]
    return Splits(train=samples[1:], val=samples[:1])


def accelerator(s: Settings) -> str:
    return "gpu" if s.device.type == "cuda" else "cpu"


def run_config(name: str, s: Settings, root: Path) -> RunConfig:
    """A one-epoch run of exactly ``warmup + steps`` batches of aug2 crops."""
    data = {"root": str(root), "crop": s.size, "num_workers": s.workers}
    data["samples_per_epoch"] = s.batch_size * (s.warmup + s.steps)
    model = {"name": name, "options": {"tiny": True} if s.tiny else {}}
    train = {"epochs": 1, "batch_size": s.batch_size, "aug": "aug2", "devices": 1}
    train["accelerator"] = accelerator(s)
    return RunConfig.model_validate(
        {"name": f"throughput-{name}", "data": data, "model": model, "train": train}
    )


def real_loaders(config: RunConfig, splits: Splits) -> tuple[Any, Any]:
    """The loaders ``fit()`` builds, with the image cache filled up front as ``fit()`` does."""
    train_dl, val_dl = build_loaders(config, splits)
    if config.data.cache:
        train_dl.dataset.preload()
        val_dl.dataset.preload()
    return train_dl, val_dl


def celltune_training(config: RunConfig, splits: Splits, run_dir: Path, s: Settings) -> float:
    """Images/s of ``Trainer.fit`` on the real module and loaders (the steps of ``fit()``)."""
    train_dl, val_dl = real_loaders(config, splits)
    steps = len(train_dl)
    torch.manual_seed(0)
    module = SegmentationModule(
        model=config.model.model_dump(mode="json"),
        train=config.train.model_dump(mode="json"),
        in_channels=1,
        steps_per_epoch=steps,
        val_tile=config.eval.tile,
    )
    timer = StepTimer(s.device)
    with quiet_lightning():
        trainer = build_trainer(config, RunDir(run_dir), progress=False, steps=steps)
        trainer.callbacks.append(timer)
        trainer.fit(module, train_dl, val_dl)
    return steady_rate(timer.stamps, s.warmup, s.batch_size)


def loader_rate(config: RunConfig, splits: Splits, s: Settings) -> float:
    """Images/s of the same training DataLoader with no model attached."""
    train_dl, _ = real_loaders(config, splits)
    stamps = []
    for _batch in train_dl:
        stamps.append(time.perf_counter())
    return steady_rate(stamps, s.warmup, s.batch_size)


def flops_per_image(name: str, s: Settings) -> tuple[float, float]:
    """FLOPs of one training step (fwd+bwd) and one forward, per image of ``size``².

    Counted on a batch of two (PSPNet's 1×1 pooling branch cannot normalise a batch of one
    in training mode); convolution and matmul FLOPs scale linearly with the batch.
    """
    model = build_model(name, s.tiny, s.device)
    x = torch.rand(2, 1, s.size, s.size, device=s.device)
    with FlopCounterMode(display=False) as train_count:
        model(x).float().square().mean().backward()
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as infer_count:
        model(x)
    return train_count.get_total_flops() / 2, infer_count.get_total_flops() / 2


def image_to_tiles(image: np.ndarray, tile: int) -> torch.Tensor:
    """Normalised ``(H, W)`` image -> ``(n, 1, tile, tile)`` non-overlapping tiles."""
    h, w = image.shape
    grid = normalize(image.astype(np.float32)).reshape(h // tile, tile, w // tile, tile)
    return torch.from_numpy(np.ascontiguousarray(grid.transpose(0, 2, 1, 3))).reshape(
        -1, 1, tile, tile
    )


def inference_rates(
    name: str, s: Settings, image: np.ndarray, naive: NaiveProcess
) -> dict[str, float]:
    """Megapixels/s of ``Predictor.predict_proba`` and of naive batched ``model(x)``."""
    predictor = Predictor(
        build_model(name, s.tiny, s.device), tile=s.size, overlap=0.0, batch_size=s.batch_size,
        device=s.device,
    )
    tiles = image_to_tiles(image, s.size).numpy()
    naive.call(prepare_inference, name, s.tiny, s.device, tiles, s.batch_size)

    def celltune() -> None:
        predictor.predict_proba(image)
        synchronize(s.device)

    medians = interleaved_medians(
        {"celltune": celltune, "naive": lambda: naive.call(inference_pass)}, s.repeats
    )
    return {key: image.size / 1e6 / sec for key, sec in medians.items()}


def bench_model(
    name: str,
    s: Settings,
    splits: Splits,
    image: np.ndarray,
    work: Path,
    peaks: dict[str, float],
) -> dict[str, Any]:
    """Every measurement for one model, as one table row."""
    config = run_config(name, s, work / "data")
    train_flops, infer_flops = flops_per_image(name, s)
    ct_train = celltune_training(config, splits, work / f"run-{name}", s)
    # A fresh reference process for each measurement: glibc adapts its mmap threshold to what
    # a process has freed so far, so a reused process would carry one run's history into the next.
    threads = torch.get_num_threads()
    with NaiveProcess(threads) as naive:
        naive_train = naive.call(
            training_rate, name, s.tiny, s.device, s.batch_size, s.size, s.warmup, s.steps
        )
    with NaiveProcess(threads) as naive:
        infer = inference_rates(name, s, image, naive)
    loader = loader_rate(config, splits, s)
    ct_peak = peaks[precision_key(auto_precision(accelerator(s), config.train.precision), s.device)]
    fp32_peak = peaks[precision_key("32-true", s.device)]
    px_flops = infer_flops / s.size**2
    params = sum(p.numel() for p in build_model(name, s.tiny, s.device).parameters())
    return {
        "model": name,
        "params_m": params / 1e6,
        "train_gflop": train_flops / 1e9,
        "ct_train": ct_train,
        "naive_train": naive_train,
        "train_x": ct_train / naive_train,
        "ct_infer": infer["celltune"],
        "naive_infer": infer["naive"],
        "infer_x": infer["celltune"] / infer["naive"],
        "ct_train_pk": ct_train * train_flops / 1e9 / ct_peak,
        "naive_train_pk": naive_train * train_flops / 1e9 / fp32_peak,
        "ct_infer_pk": infer["celltune"] * 1e6 * px_flops / 1e9 / fp32_peak,
        "naive_infer_pk": infer["naive"] * 1e6 * px_flops / 1e9 / fp32_peak,
        "loader": loader,
        "loader_x": loader / ct_train,
        "epoch_s": NEURIPS_TRAIN_IMAGES / ct_train,
    }


#: (row key, column header, format) of the results table, in order.
COLUMNS = (
    ("model", "model", "{}"),
    ("params_m", "params (M)", "{:.1f}"),
    ("train_gflop", "GFLOP/img train", "{:.3g}"),
    ("ct_train", "train img/s celltune", "{:.2f}"),
    ("naive_train", "train img/s naive", "{:.2f}"),
    ("train_x", "train ×", "{:.2f}"),
    ("ct_infer", "infer Mpx/s celltune", "{:.3f}"),
    ("naive_infer", "infer Mpx/s naive", "{:.3f}"),
    ("infer_x", "infer ×", "{:.2f}"),
    ("ct_train_pk", "train % peak celltune", "{:.0%}"),
    ("naive_train_pk", "train % peak naive", "{:.0%}"),
    ("ct_infer_pk", "infer % peak celltune", "{:.0%}"),
    ("naive_infer_pk", "infer % peak naive", "{:.0%}"),
    ("loader", "loader img/s", "{:.1f}"),
    ("loader_x", "loader ÷ train", "{:.1f}"),
    ("epoch_s", "491-crop epoch (s)", "{:.0f}"),
)


#: Ratios from 1 - NOISE up to 1 are ties: repeated runs of one configuration differ by this much.
NOISE = 0.02


def checks(rows: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """The issue's acceptance criteria: (failures, ties within :data:`NOISE`)."""
    failed, ties = [], []
    for row in rows:
        for key, what in (("train_x", "training"), ("infer_x", "inference")):
            text = f"{row['model']} {what} {row[key]:.2f}×"
            if row[key] < 1.0 - NOISE:
                failed.append(f"{text}: celltune slower than naive")
            elif row[key] < 1.0:
                ties.append(text)
        if row["loader_x"] < 3.0:
            failed.append(f"{row['model']}: loader only {row['loader_x']:.1f}× the training rate")
    return failed, ties


def verdict(rows: list[dict[str, Any]]) -> str:
    """One sentence on the acceptance criteria."""
    failed, ties = checks(rows)
    text = "FAILED: " + "; ".join(failed) if failed else "all checks pass"
    if ties:
        text += f" (ties within the ±{NOISE:.0%} run-to-run noise: {', '.join(ties)})"
    return f"Result (celltune ≥ naive, loader ≥ 3× training): {text}."


#: How each column is measured, printed under the table.
METHOD_NOTES = """\
- *train*: celltune = `Trainer.fit` on `SegmentationModule` with the `build_loaders` DataLoader
  (CropDataset, aug2, decoded-image cache) over synthetic 16-bit TIFFs, timed from the end of
  the last warm-up step to the end of the last step, so data loading, augmentation, logging,
  gradient clipping and the LR schedule are included. Naive = plain loop, fp32, default memory
  format, `torch.optim.Adam`, BCE, one random batch already in memory, run in a spawned
  process of its own with the C library's default `malloc` settings, as a user's own script
  would run (celltune's path raises glibc's mmap threshold for its process: `celltune.runtime`).
- *infer*: celltune = `Predictor.predict_proba` (tile = crop size, overlap 0, batch = batch
  size; includes normalisation, tiling, sigmoid and blending) on one synthetic image; naive =
  `model(x)` under `no_grad` on the same tiles, pre-cut and in memory, in the naive process;
  passes alternate between the two processes. With overlap 0 both run
  the network on exactly the same pixels (the predictor's default overlap of 0.25 costs more
  network work per pixel by design).
- *% peak*: FLOPs counted by `torch.utils.flop_counter` (1 multiply-add = 2 FLOPs; one fwd+bwd
  per training image, one forward per tile) × rate, over the matmul peak of the precision the
  path runs in (on CUDA: celltune training bf16-mixed; fp32 paths against the TF32 peak, as
  cuDNN runs fp32 convolutions in TF32 by default).
- *loader*: the same training DataLoader iterated without a model; *491-crop epoch*: one epoch
  of the NeurIPS training set (one crop per image) at the celltune training rate."""


def conditions(s: Settings, peaks: dict[str, float], command: str) -> list[str]:
    """Lines saying where, with what and how the numbers were taken."""
    machine = "; ".join(f"{k}: {v}" for k, v in machine_info(s.device).items())
    vers = ", ".join(f"{k} {v}" for k, v in versions().items())
    peak_text = ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items())
    passes = f"{s.repeats} timed pass{'es' if s.repeats > 1 else ''}"
    tiny = ", tiny models" if s.tiny else ""
    return [
        f"Measured {timestamp()}. Machine: {machine}.",
        f"Versions: {vers}.",
        f"Matmul peak (best of 5): {peak_text}.",
        f"Command: `{command}`",
        f"Settings: batch {s.batch_size}, {s.size}×{s.size} crops and tiles, {s.warmup} warm-up "
        f"+ {s.steps} timed training steps, {s.image_size}² inference image (median of "
        f"{passes}), {s.workers} loader workers{tiny}.",
    ]


def report(rows: list[dict[str, Any]], s: Settings, peaks: dict[str, float], command: str) -> str:
    """The BENCHMARKS.md section: conditions, table, verdict and how it was measured."""
    return "\n".join(
        [
            "## Throughput: celltune vs naive PyTorch",
            "",
            *conditions(s, peaks, command),
            "",
            markdown_table(COLUMNS, rows),
            "",
            verdict(rows),
            "",
            METHOD_NOTES,
        ]
    )


def run(s: Settings, work: Path) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Measure every model in ``s``; returns table rows and the matmul peaks."""
    from celltune.data.synthetic import generate_image

    peaks = measure_peaks(s.device)
    splits = write_training_data(work / "data", s)
    image, _ = generate_image(1, s.image_size, "fluorescence")
    rows = [bench_model(name, s, splits, image, work, peaks) for name in s.models]
    return rows, peaks


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tune_allocator()  # as `celltune train` and `celltune predict` do when they start
    s = settings_from_args(args)
    with tempfile.TemporaryDirectory(prefix="celltune-throughput-") as tmp:
        rows, peaks = run(s, Path(tmp))
    print_table(COLUMNS, rows, f"celltune throughput on {s.device} ({s.batch_size}×{s.size}²)")
    body = report(rows, s, peaks, command_line("benchmarks/throughput.py", argv))
    print(verdict(rows))
    if args.out.lower() != "none":
        print(f"wrote {write_section(args.out, SECTION, body)}")
    return rows


if __name__ == "__main__":
    main()
