"""The LightningModule: one segmentation network, its loss, optimiser and schedule.

The module stores the model and training sections of the run config as hyperparameters, so a
checkpoint alone is enough to rebuild the network
(:func:`celltune.models.checkpoint.load_model_from_checkpoint`).
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import numpy as np
import torch

from celltune.config import ModelConfig, TrainConfig
from celltune.data.derive import EPOCHS_DEFAULT
from celltune.evaluation.metrics import Counts, dice
from celltune.inference.tiling import predict_tiled
from celltune.models.build import build_network, foreground_probability
from celltune.training.losses import build_loss


def lr_factor(progress: float, warmup: float) -> float:
    """Linear warm-up over the first ``warmup`` fraction, then cosine decay to 1% at the end."""
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return max(progress / warmup, 0.01)
    rest = (progress - warmup) / max(1.0 - warmup, 1e-8)
    return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * rest))


class SegmentationModule(L.LightningModule):
    """Trains a segmentation network on crops and validates on whole images."""

    def __init__(
        self,
        model: dict[str, Any],
        train: dict[str, Any],
        in_channels: int = 1,
        steps_per_epoch: int = 1,
        val_tile: int = 512,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model_cfg = ModelConfig.model_validate(model)
        self.train_cfg = TrainConfig.model_validate(train)
        self.net = build_network(self.model_cfg, in_channels)
        self.loss_fn = build_loss(self.train_cfg.loss, self.model_cfg.head)
        self.steps_per_epoch = max(1, steps_per_epoch)
        # Validation images with more pixels than (2 * val_tile)² are predicted in tiles.
        self.val_tile = int(val_tile)
        self._val_dice: list[float] = []
        # Set by celltune.training.budget.TimeBudget when a time budget decides the length.
        self.planned_steps: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if self.train_cfg.channels_last and x.device.type == "cpu":
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def on_train_epoch_start(self) -> None:
        # Reseed per epoch so a run resumed from an epoch checkpoint replays the same
        # random stream (dropout, drop-path) as an uninterrupted one.
        seed = self.train_cfg.seed * 100_003 + self.current_epoch
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)

    def setup(self, stage: str) -> None:
        # Weights in channels_last too, not only the inputs: with inputs alone CPU training was
        # no faster than the default layout; with both, 1.23x (U-Net R34, 8x256², 2 threads,
        # benchmarks/throughput.py). Done before the optimiser and any DDP wrapper see them.
        on_cpu = self.trainer.strategy.root_device.type == "cpu"
        if self.train_cfg.channels_last and on_cpu:
            self.net.to(memory_format=torch.channels_last)
        if self.train_cfg.compile and stage == "fit":
            # In place, so the state dict keeps its keys and checkpoints load uncompiled. Only
            # for fit: setup runs again for the final validation, and compiling anew would
            # throw away the compiled graphs.
            self.net.compile()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(self._prepare(batch["image"]))
        loss = self.loss_fn(logits, batch["mask"])
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True,
                 batch_size=batch["image"].shape[0], sync_dist=True)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        image, mask = batch["image"], batch["mask"]
        if any(h * w > (2 * self.val_tile) ** 2 for h, w in batch["size"]):
            self._validate_tiled(image, mask, batch["size"])
            return
        logits = self(self._prepare(image))
        for i, (h, w) in enumerate(batch["size"]):
            lg = logits[i : i + 1, :, :h, :w]
            tg = mask[i : i + 1, ..., :h, :w]
            loss = self.loss_fn(lg, tg)
            self.log("val_loss", loss, on_epoch=True, prog_bar=False, batch_size=1,
                     sync_dist=True)
            pred = foreground_probability(lg, head=self.model_cfg.head)[0] > 0.5
            self._val_dice.append(_dice(pred, _truth(tg)))

    def _validate_tiled(self, image: torch.Tensor, mask: torch.Tensor, sizes: Any) -> None:
        """Large images: sliding-window probabilities, so memory stays bounded by the tile.

        Only Dice is recorded for them; the validation loss averages the images that fit.
        """
        def forward(x: torch.Tensor) -> torch.Tensor:
            return foreground_probability(
                self(self._prepare(x)), keepdim=True, head=self.model_cfg.head
            )

        for i, (h, w) in enumerate(sizes):
            prob = predict_tiled(
                forward, image[i, :, :h, :w].cpu().numpy(), out_channels=1,
                tile=self.val_tile, overlap=0.25, batch_size=2, device=self.device,
            )[0]
            pred = torch.from_numpy(prob > 0.5)
            self._val_dice.append(_dice(pred, _truth(mask[i : i + 1, ..., :h, :w]).cpu()))

    def on_validation_epoch_end(self) -> None:
        values = torch.tensor(self._val_dice or [0.0], device=self.device)
        self._val_dice.clear()
        self.log("val_dice", values.mean(), prog_bar=True, sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.train_cfg
        # Fused AdamW steps ~3x faster than foreach on CPU as on CUDA, but Lightning refuses
        # to clip the gradients of a fused optimiser under mixed precision.
        mixed = self._trainer is not None and "mixed" in str(self._trainer.precision)
        fused = not (mixed and cfg.grad_clip)
        opt = torch.optim.AdamW(
            self.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
            foreach=None if fused else True, fused=True if fused else None,
        )
        if cfg.schedule == "constant":
            return {"optimizer": opt}
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self._lr_lambda)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _lr_lambda(self, step: int) -> float:
        total = self.total_steps()
        warmup = self.train_cfg.warmup_epochs * self.steps_per_epoch / total
        return lr_factor(step / total, min(warmup, 0.5))

    def total_steps(self) -> int:
        """The step the schedule anneals to: the time budget's plan, else the epochs'."""
        if self.planned_steps is not None:
            return max(1, int(self.planned_steps))
        # A bare module (no derived epochs, no budget) uses the epochs rule's floor.
        epochs = self.train_cfg.epochs or EPOCHS_DEFAULT
        return max(1, epochs * self.steps_per_epoch)


def _truth(target: torch.Tensor) -> torch.Tensor:
    """Boolean foreground of a ``(1, 1|2, H, W)`` float or ``(1, H, W)`` class target.

    Every class but the background is foreground (the boundary head's interior and boundary);
    a float target's channel 0 is the mask (the distance head's channel 1 is its distance map).
    """
    return (target[0, 0] > 0.5) if target.dim() == 4 else (target[0] > 0)


def _dice(pred: torch.Tensor, truth: torch.Tensor) -> float:
    """Dice of two boolean masks, by :func:`celltune.evaluation.metrics.dice` and its empty rule."""
    p, t = pred.bool(), truth.bool()
    tp = int((p & t).sum())
    fp, fn = int(p.sum()) - tp, int(t.sum()) - tp
    return float(dice(Counts(tp, fp, fn, p.numel() - tp - fp - fn)))
