"""Train one model from a :class:`RunConfig` into a run folder.

Example:
    >>> from celltune.config import RunConfig
    >>> cfg = RunConfig.model_validate({"data": {"root": "data/synth"}})   # doctest: +SKIP
    >>> fit(cfg, "runs/unet")                                             # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader

from celltune import __version__
from celltune.config import RunConfig
from celltune.data.augment import AUGMENTATIONS
from celltune.data.dataset import CropDataset, WholeImageDataset, collate_whole
from celltune.data.derive import (
    data_filter,
    derive_config,
    derive_network,
    derive_training,
    unset_fields,
)
from celltune.data.fingerprint import fingerprint_for
from celltune.data.neurips import FILTERS, make_splits, training_images
from celltune.data.samples import Splits
from celltune.data.synthetic import ensure_dataset
from celltune.errors import ConfigError, DataError, RunError
from celltune.models import HEAD_TARGETS, MODELS
from celltune.rundir import RunDir
from celltune.training.budget import TimeBudget
from celltune.training.callbacks import (
    AtomicCheckpointIO,
    EpochLine,
    LastCheckpoint,
    MetricsCSV,
    StepBar,
)
from celltune.training.distributed import is_worker, steps_per_process
from celltune.training.losses import LOSSES
from celltune.training.module import SegmentationModule
from celltune.training.resume import check_checkpoint, interruptible


def provenance() -> dict[str, Any]:
    """Package version and, when run from a git checkout, the commit."""
    info: dict[str, Any] = {"version": __version__}
    commit = _git_commit()
    if commit:
        info["git_commit"] = commit
    return info


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
            text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def prepare_run_dir(out: str | os.PathLike, *, resume: bool, overwrite: bool) -> Path:
    """Create the run folder, refusing to silently reuse a non-empty one."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunError(f"{out}: exists and is not a folder.")
    busy = out.is_dir() and any(out.iterdir())
    if busy and resume:
        run = RunDir(out)
        if not run.is_run():
            raise RunError(f"{out}: cannot resume, no {run.config_path.name} in this folder.")
        return out
    if busy and not overwrite:
        raise RunError(
            f"{out}: folder exists and is not empty; pass --resume to continue it or "
            "--overwrite to replace it."
        )
    if busy and overwrite:
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise RunError(f"{out}: cannot write to the output folder ({exc.strerror}).") from exc
    return out


def check_names(config: RunConfig) -> None:
    """Fail on an unknown model, loss, augmentation preset or filter before writing anything.

    Otherwise the error would come after the run folder was created, and the corrected
    command would be refused because the folder is no longer empty.
    """
    MODELS.get(config.model.name)
    LOSSES.get(config.train.loss)
    AUGMENTATIONS.get(config.train.aug)
    FILTERS.get(config.data.filter)


def resolve_data(config: RunConfig, run: RunDir) -> RunConfig:
    """Fill in the data root: generate the synthetic set when none is given."""
    if config.data.root is not None:
        root = Path(config.data.root).expanduser()
        if not root.exists():
            raise RunError(f"{root}: data folder not found.")
        return config.model_copy(update={"data": config.data.model_copy(update={"root": root})})
    syn = config.data.synthetic
    root = run.data_dir
    if not is_worker():  # DDP workers start after rank 0 has written it
        ensure_dataset(root, n=syn.n, size=syn.size, seed=syn.seed, png_fraction=syn.png_fraction)
    return config.model_copy(update={"data": config.data.model_copy(update={"root": root})})


def derive_settings(config: RunConfig, run: RunDir, splits: Splits | None = None) -> RunConfig:
    """Fill the data settings the config left unset from the training images' fingerprint.

    The fingerprint describes the images training and validation are drawn from (never the
    test images) and is saved as the run folder's fingerprint file, which DDP workers and
    reruns read instead of decoding the images again. ``splits`` (or splits already saved in
    the run folder) fix those images, and a given split fixes the validation count too.
    """
    missing = unset_fields(config.data)
    if not missing:
        return config
    fixed = splits if splits is not None else (
        run.read_splits() if run.splits_path.is_file() else None)
    if fixed is not None and "val" in missing:
        n_val = max(1, len(fixed.val))
        config = config.model_copy(update={
            "data": config.data.model_copy(update={"val": n_val}),
            "derived": {**config.derived, "data.val": f"{n_val}: the validation images of the "
                        "split given"},
        })
    if fixed is not None:
        pool = [*fixed.train, *fixed.val]
    else:
        chosen = config.data.filter if "filter" not in missing else data_filter().value
        pool = training_images(config.data.model_copy(update={"filter": chosen}),
                               config.train.seed)
    fingerprint = fingerprint_for(pool, run.fingerprint_path, write=not is_worker())
    return derive_config(config, fingerprint)[0]


def load_or_make_splits(config: RunConfig, run: RunDir) -> Splits:
    if run.splits_path.is_file():
        return run.read_splits()
    splits = make_splits(config.data, seed=config.train.seed)
    if not is_worker():
        run.write_splits(splits)
    return splits


def trains_on_gpu(accelerator: str) -> bool:
    """Whether Lightning's ``accelerator`` setting trains on a GPU (or another accelerator)."""
    if accelerator == "cpu":
        return False
    if accelerator == "auto":
        return torch.cuda.is_available() or torch.backends.mps.is_available()
    return True


def auto_precision(accelerator: str, precision: str) -> str:
    """bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU (bf16 is slow there)."""
    if precision != "auto":
        return precision
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def build_loaders(config: RunConfig, splits: Splits) -> tuple[Any, Any]:
    """Training crops and whole validation images, with the target the model's head learns."""
    d, t = config.data, config.train
    target = HEAD_TARGETS[config.model.head]
    if t.gaps:
        if target != "binary":
            raise ConfigError(
                f"--gaps (train.gaps) applies to the binary head only; --head "
                f"{config.model.head} has its own way to separate touching cells: drop --gaps.")
        target = "binary_gaps"
    train_ds = CropDataset(
        splits.train, crop=d.crop, channels=d.channels, augment=t.aug,
        samples_per_epoch=d.samples_per_epoch, seed=t.seed,
        foreground_sampling=d.foreground_sampling, resize=d.resize, cache=d.cache, target=target,
    )
    val_ds = WholeImageDataset(
        splits.val, channels=d.channels, resize=d.resize, cache=d.cache, target=target
    )
    cuda = torch.cuda.is_available() and t.accelerator in ("auto", "gpu", "cuda")
    common = {"num_workers": d.num_workers, "pin_memory": cuda,
              "persistent_workers": d.num_workers > 0}
    # The epoch-aware sampler hands (epoch, index) to the dataset, so crops and augmentation
    # depend only on (seed, epoch, index): identical across workers, processes and resumes.
    # Under DDP it shards the items itself (Lightning's sampler replacement is off), so the
    # processes together train on exactly the batches of one process.
    train_dl = DataLoader(
        train_ds, batch_size=t.batch_size, sampler=train_ds.sampler(shard=True),
        drop_last=len(train_ds) >= t.batch_size, **common,
    )
    val_dl = DataLoader(val_ds, batch_size=1, shuffle=False, collate_fn=collate_whole, **common)
    return train_dl, val_dl


@dataclass
class FitResult:
    """A trained run: its folder, the config it was trained with (data root resolved), splits."""

    run: RunDir
    config: RunConfig
    splits: Splits


def fit(
    config: RunConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    splits: Splits | None = None,
) -> FitResult:
    """Train ``config`` into the run folder ``out``.

    Writes ``config.yaml``, ``splits.json``, ``checkpoints/{best,last}.ckpt`` and
    ``metrics.csv``. With ``resume`` the run continues from ``last.ckpt`` with the saved config.
    ``splits`` fixes the train/val/test images instead of drawing them from the data root.
    """
    check_names(config)
    run, config, splits = _prepare(config, out, resume=resume, overwrite=overwrite,
                                   splits=splits)
    L.seed_everything(config.train.seed, workers=True, verbose=False)
    train_dl, val_dl = build_loaders(config, splits)
    if config.data.cache:
        # Decode every image now: a corrupt file fails here, naming it, instead of epochs
        # later. The cache keeps what was read, and forked DataLoader workers share it.
        train_dl.dataset.preload()
        val_dl.dataset.preload()
    ckpt = run.checkpoint("last")
    ckpt_path = str(ckpt) if resume and ckpt.is_file() else None
    if ckpt_path:
        check_checkpoint(ckpt, config, run.config_path)
    val_every = resolve_val_every(config, train_dl.dataset, val_dl.dataset)
    with quiet_lightning():
        trainer = build_trainer(config, run, progress=progress, steps=max(1, len(train_dl)),
                                val_every=val_every,
                                val_cost=validation_cost(config, val_dl.dataset))
        steps = steps_per_process(
            len(train_dl.sampler), train_dl.batch_size, train_dl.drop_last, trainer.world_size
        )
        module = SegmentationModule(
            model=config.model.model_dump(mode="json"),
            train=config.train.model_dump(mode="json"),
            in_channels=config.data.channels, steps_per_epoch=steps, val_tile=config.eval.tile,
        )
        with interruptible(trainer, run.path):
            trainer.fit(module, train_dl, val_dl, ckpt_path=ckpt_path)
            validate_final(trainer, module, val_dl, run)
    if not run.checkpoint("best").is_file() and trainer.is_global_zero:
        raise RunError(f"{run.path}: training ended without a checkpoint.")
    return FitResult(run, config, splits)


def _prepare(
    config: RunConfig, out: str | os.PathLike, *, resume: bool, overwrite: bool,
    splits: Splits | None,
) -> tuple[RunDir, RunConfig, Splits]:
    """The run folder with its config and splits written; the config and splits to train on.

    Data settings the config leaves unset are derived from the training images here, before
    the config is saved, so config.yaml holds the values trained with and their reasons.
    DDP workers re-run the command after rank 0 prepared the folder; with --overwrite they
    would delete it, without --resume refuse it. Rank 0 owns every file.
    """
    worker = is_worker()
    run = RunDir(out if worker else prepare_run_dir(out, resume=resume, overwrite=overwrite))
    if resume and run.is_run():
        config = run.read_config()
    config = derive_settings(resolve_data(config, run), run, splits)
    if splits is not None and not worker and not run.splits_path.is_file():
        run.write_splits(splits)
    splits = load_or_make_splits(config, run)
    _check_splits(splits, config)
    config = derive_training(config, len(splits.train))[0]
    config = derive_network(config, trains_on_gpu(config.train.accelerator))[0]
    if not worker:
        run.write_config(config, provenance())
    return run, config, splits


def _check_splits(splits: Splits, config: RunConfig) -> None:
    for name in ("train", "val"):
        if not splits[name]:
            raise DataError(
                f"{config.data.root}: the {name} split is empty after filter "
                f"{config.data.filter!r}; add images or use --filter all."
            )


#: With a time budget, last.ckpt is written at the end of an epoch at most this often.
LAST_CHECKPOINT_SECONDS = 60.0

#: Share of the training compute that automatic validation scheduling allows for validation.
VALIDATION_SHARE = 0.15


def resolve_val_every(config: RunConfig, train_ds: Any, val_ds: Any) -> int:
    """Epochs between validations; ``auto`` keeps validation near 15% of training compute.

    A training step costs about three forward passes (forward and backward) per crop pixel,
    validation one forward pass per image pixel, so the ratio of pixel counts decides. The
    result depends only on the data and the config, never on timing, so runs stay
    reproducible. (With a time budget, :class:`TimeBudget` spaces validations in time.)
    """
    every = config.train.val_every
    if every != "auto":
        return int(every)
    val_pixels = sum(math.prod(val_ds.load(i)[0].shape[:2]) for i in range(len(val_ds)))
    train_pixels = 3 * len(train_ds) * config.data.crop**2
    return max(1, math.ceil(val_pixels / (VALIDATION_SHARE * max(train_pixels, 1))))


def validation_cost(config: RunConfig, val_ds: Any) -> float:
    """One validation's predicted cost in training steps, from pixel counts.

    A step is about three forward passes over ``batch_size`` crops; validation one forward
    pass per image pixel, more for images large enough to be tiled (tiles overlap).
    """
    tile, overlap = config.eval.tile, config.eval.overlap
    pixels = 0.0
    for i in range(len(val_ds)):
        area = math.prod(val_ds.load(i)[0].shape[:2])
        pixels += area / (1.0 - overlap) ** 2 if area > (2 * tile) ** 2 else area
    return pixels / (3 * config.train.batch_size * config.data.crop**2)


def validate_final(trainer: Any, module: Any, val_dl: Any, run: RunDir) -> None:
    """Validate the final weights when the last epoch was not validated (interval, time limit).

    With a cosine schedule the last weights are usually the best ones; without this they
    could never become ``best.ckpt`` when training stops between two validations.
    """
    metrics = next((c for c in trainer.callbacks if isinstance(c, MetricsCSV)), None)
    if metrics is None or not metrics.rows or not math.isnan(metrics.rows[-1]["val_dice"]):
        return
    budget = next((c for c in trainer.callbacks if isinstance(c, TimeBudget)), None)
    if budget is not None and not budget.validates():
        # Validation does not fit the budget: the annealed final weights are the checkpoint.
        trainer.save_checkpoint(run.checkpoint("best"))
        return
    best_cb = trainer.checkpoint_callback
    result = trainer.validate(module, val_dl, verbose=False)[0]
    score = float(result["val_dice"])
    metrics.rows[-1]["val_dice"] = score
    metrics.rows[-1]["val_loss"] = float(result.get("val_loss", math.nan))
    if trainer.is_global_zero:
        metrics.write()
    best = best_cb.best_model_score if best_cb is not None else None
    if best is None or score > float(best):
        trainer.save_checkpoint(run.checkpoint("best"))


def build_trainer(
    config: RunConfig, run: RunDir, *, progress: bool, steps: int, val_every: int = 1,
    val_cost: float = 0.0,
) -> Any:
    """The Lightning trainer with celltune's callbacks.

    With ``train.max_time`` a :class:`TimeBudget` (its clock starts here, after the images
    are loaded) decides the length, the schedule's end and, for ``val_every: auto``, when to
    validate (``val_cost``: a validation's predicted cost in training steps); ``epochs`` then
    only caps, and ``last.ckpt`` is written at most once a minute (a time-budgeted run does
    not promise a bit-exact resume, and a 300 MB checkpoint after every short epoch cost up
    to a tenth of the budget).
    """
    t = config.train
    budget = None
    if t.max_time:
        budget = TimeBudget(t.max_time, epoch_cap=t.epochs,
                            space_validations=t.val_every == "auto", validation_steps=val_cost)
    callbacks: list[Any] = [
        ModelCheckpoint(
            dirpath=run.checkpoints_dir, filename="best", monitor="val_dice", mode="max",
            save_top_k=1, enable_version_counter=False,
        ),
        # last.ckpt every epoch, from its own callback: Lightning 2.6's save_last=True writes
        # it only in epochs that improve the best score, so a resume would replay every
        # epoch since then. Listed after "best" so that it stores the updated best score.
        LastCheckpoint(
            dirpath=run.checkpoints_dir, filename="last", save_top_k=1,
            save_on_train_epoch_end=True, enable_version_counter=False,
            min_seconds=LAST_CHECKPOINT_SECONDS if budget is not None else 0.0,
        ),
        MetricsCSV(run),
    ]
    if budget is not None:
        callbacks.append(budget)
    if t.patience:
        callbacks.append(EarlyStopping(monitor="val_dice", mode="max", patience=t.patience))
    interactive = progress and sys.stderr.isatty()
    if interactive:
        callbacks.append(StepBar())
    elif progress:
        callbacks.append(EpochLine(config.name, budget))
    return L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=auto_precision(t.accelerator, t.precision),
        max_epochs=t.epochs or -1,
        check_val_every_n_epoch=val_every,
        gradient_clip_val=t.grad_clip,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=run.path,
        logger=False,
        # The training sampler shards itself; every process validates every image, so
        # val Dice is exact (a DistributedSampler would pad odd counts with duplicates).
        use_distributed_sampler=False,
        enable_progress_bar=interactive,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=max(1, min(50, steps)),
    )


_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning")


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's informational chatter (GPU available: False, tips) for users."""
    levels = {n: logging.getLogger(n).level for n in _LIGHTNING_LOGGERS}
    for n in _LIGHTNING_LOGGERS:
        logging.getLogger(n).setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")
            warnings.filterwarnings("ignore", message=".*litlogger.*")
            warnings.filterwarnings("ignore", message=".*`max_epochs` was not set.*")
            # Expected when resuming: the folder holds the checkpoints being continued.
            warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
            yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)
