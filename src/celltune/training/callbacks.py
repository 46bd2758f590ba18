"""Lightning callbacks and plugins: per-epoch metrics.csv, atomic checkpoints."""

from __future__ import annotations

import os
import time
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar

from celltune.io import atomic_path
from celltune.rundir import RunDir

METRIC_COLUMNS = ("epoch", "train_loss", "val_loss", "val_dice", "lr", "seconds")


class ValidationSeen(L.Callback):
    """Knows whether the current epoch was validated (Lightning validates before the epoch's
    ``on_train_epoch_end``), so an epoch that was not never shows the last epoch's values."""

    def __init__(self) -> None:
        self._validated_epoch: int | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated_epoch = trainer.current_epoch

    def validated(self, trainer: L.Trainer) -> bool:
        return self._validated_epoch == trainer.current_epoch


class MetricsCSV(ValidationSeen):
    """Writes ``metrics.csv`` after every epoch, one row per epoch (val columns NaN when the
    epoch was not validated).

    The history is part of the callback's checkpoint state, so a resumed run rewrites the
    file with exactly the rows of the epochs it restored, never duplicates.
    """

    def __init__(self, run: RunDir) -> None:
        super().__init__()
        self.run = run
        self.rows: list[dict[str, Any]] = []
        self._epoch_start = time.monotonic()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        opt = trainer.optimizers[0] if trainer.optimizers else None
        validated = self.validated(trainer)
        row = {
            "epoch": trainer.current_epoch,
            "train_loss": _num(m.get("train_loss_epoch", m.get("train_loss"))),
            "val_loss": _num(m.get("val_loss")) if validated else float("nan"),
            "val_dice": _num(m.get("val_dice")) if validated else float("nan"),
            "lr": opt.param_groups[0]["lr"] if opt else float("nan"),
            "seconds": round(time.monotonic() - self._epoch_start, 3),
        }
        self.rows = [r for r in self.rows if r["epoch"] < row["epoch"]] + [row]
        if trainer.is_global_zero:
            self.write()

    def write(self) -> None:
        self.run.write_metrics(self.rows, METRIC_COLUMNS)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": list(self.rows)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict.get("rows", []))


def _num(value: Any) -> float:
    if value is None:
        return float("nan")
    if isinstance(value, torch.Tensor):
        return float(value.detach().cpu())
    return float(value)


class StepBar(TQDMProgressBar):
    """Lightning's bar without the per-batch validation bar (validation is short and noisy)."""

    def init_validation_tqdm(self) -> Any:
        bar = super().init_validation_tqdm()
        bar.disable = True
        return bar


class EpochLine(ValidationSeen):
    """One line per epoch for logs and CI, where a redrawn progress bar would spam.

    Validation numbers appear only in the epoch that measured them; with a time budget the
    line says how much of it is used.
    """

    def __init__(self, name: str, budget: Any = None) -> None:
        super().__init__()
        self.name = name
        self.budget = budget
        self._start = time.monotonic()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        print(self.line(trainer), flush=True)

    def line(self, trainer: L.Trainer) -> str:
        m = trainer.callback_metrics
        epochs = "" if trainer.max_epochs in (None, -1) else f"/{trainer.max_epochs}"
        parts = [f"{self.name} epoch {trainer.current_epoch + 1}{epochs}"]
        keys = [("train_loss_epoch", "loss")]
        if self.validated(trainer):
            keys += [("val_loss", "val_loss"), ("val_dice", "val_dice")]
        parts += [f"{label} {_num(m[key]):.4f}" for key, label in keys if key in m]
        parts.append(f"{time.monotonic() - self._start:.1f}s")
        if self.budget is not None:
            parts.append(f"budget {min(self.budget.used_fraction(), 9.99):.0%} used")
        return "  ".join(parts)


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt`` at epoch ends, at most every ``min_seconds``, always when training ends.

    With ``min_seconds=0`` it is written after every epoch, which an exact resume needs.
    """

    def __init__(self, *, min_seconds: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.min_seconds = min_seconds
        self._written_at = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        last_epoch = trainer.max_epochs not in (None, -1) and (
            trainer.current_epoch + 1 >= trainer.max_epochs)
        due = time.monotonic() - self._written_at >= self.min_seconds
        if due or last_epoch or trainer.should_stop:
            super().on_train_epoch_end(trainer, pl_module)
            self._written_at = time.monotonic()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves checkpoints to a temporary file and renames it, so a kill never truncates one."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)
