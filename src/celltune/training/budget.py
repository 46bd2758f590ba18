"""Filling a wall-clock training budget: how many steps fit, when to validate, when to stop.

With ``train.max_time`` the run trains until the budget is used rather than for a fixed
number of epochs. :class:`TimeBudget` times the steps as they run and keeps a plan, the
optimiser step at which training ends, that the learning-rate schedule anneals to
(:meth:`celltune.training.module.SegmentationModule._lr_lambda`). The plan is re-estimated
after every step from the measured cost of a step, validations and checkpoints included, so
a machine that slows down or speeds up moves the end, not the budget. Validations are spaced
in time (:func:`validation_gap`), so a run on large images still chooses its best checkpoint
from several of them, and the last validation's duration is kept in reserve for the
validation of the final weights.

The clock starts when the trainer is built, after the images are loaded and before the
first step, and survives a resume: the time spent before the interruption is part of the
checkpoint.

Example:
    >>> plan_steps(steps=10, elapsed=30.0, first_step_at=3.0, budget=120.0, reserve=6.0)
    38
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import lightning as L

#: Validations aimed for over a budget, when validation is cheap enough.
VALIDATIONS_PER_BUDGET = 6
#: Most of the time validation may take: a validation every ``duration / share`` seconds.
VALIDATION_TIME_SHARE = 0.2
#: Steps timed before the plan is trusted; until then the schedule assumes the budget is long.
MIN_TIMED_STEPS = 2
#: The plan before any step is timed: far away, so the warm-up runs at its own pace.
UNPLANNED = 10**9


def plan_steps(
    steps: int, elapsed: float, first_step_at: float, budget: float, reserve: float,
    cap: int | None = None,
) -> int:
    """The optimiser step at which training should end to use ``budget`` seconds.

    Args:
        steps: optimiser steps done so far (at least 1 once the first step is timed).
        elapsed: seconds used so far, validations and checkpoints included.
        first_step_at: ``elapsed`` at the end of the first step; the first step pays for
            one-off set-up (allocations, caches) and is left out of the step cost.
        budget: the budget in seconds.
        reserve: seconds kept for the validation of the final weights.
        cap: a step count the run must not pass (``epochs`` given with a budget).
    """
    per_step = (elapsed - first_step_at) / max(steps - 1, 1)
    remaining = budget - reserve - elapsed
    planned = steps + max(0, math.floor(remaining / max(per_step, 1e-6)))
    return min(planned, cap) if cap is not None else planned


def validation_gap(horizon: float, last_validation: float | None) -> float:
    """Seconds between validations: a sixth of the training time, wider when costly.

    ``horizon`` is the training's expected length (the budget, or less when an epoch cap
    ends it sooner). A validation that took ``d`` seconds is repeated at most every
    ``d / 0.2`` seconds, so validation never takes more than a fifth of the time.
    """
    gap = horizon / VALIDATIONS_PER_BUDGET
    if last_validation:
        gap = max(gap, last_validation / VALIDATION_TIME_SHARE)
    return gap


@dataclass
class BudgetState:
    """What a resume needs: seconds already spent, the plan, the validations' timing."""

    spent: float = 0.0
    planned: int | None = None
    last_validation_end: float = 0.0
    last_validation_seconds: float | None = None
    first_step_at: float | None = None


class TimeBudget(L.Callback):
    """Trains until ``minutes`` are used, with the learning-rate schedule annealed to the end.

    Sets ``planned_steps`` on the LightningModule after every step; stops training when the
    plan is reached; chooses at each epoch start whether that epoch ends with a validation.
    Under DDP rank 0's clock decides and the other processes follow it, so every replica
    uses the same learning rate and stops at the same step.
    """

    def __init__(self, minutes: float, *, started: float | None = None,
                 epoch_cap: int | None = None, space_validations: bool = True,
                 validation_steps: float = 0.0) -> None:
        self.budget = 60.0 * minutes
        # A validation's predicted cost in training steps, until one has been timed.
        self.validation_steps = validation_steps
        self._per_step: float | None = None
        self.started = time.monotonic() if started is None else started
        self.epoch_cap = epoch_cap
        self.space_validations = space_validations
        self.state = BudgetState()
        self._spent_before = 0.0
        self._validation_start: float | None = None
        self._epoch_started: float | None = None
        self._epoch_seconds = 0.0
        # When training is expected to end: the budget, or sooner when epochs cap it.
        self._horizon = self.budget

    # --- clock -------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self._spent_before + time.monotonic() - self.started

    def used_fraction(self) -> float:
        return self.elapsed() / self.budget

    def state_dict(self) -> dict[str, Any]:
        self.state.spent = self.elapsed()
        return dict(vars(self.state))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.state = BudgetState(**state_dict)
        self._spent_before = self.state.spent

    # --- hooks -------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Until steps are timed the plan is the cap, or the budget's end far away; a resumed
        # run continues the plan it had.
        cap = self._cap(trainer)
        pl_module.planned_steps = self.state.planned or cap or UNPLANNED

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        steps, elapsed = trainer.global_step, self.elapsed()
        if self.state.first_step_at is None and steps >= 1:
            self.state.first_step_at = elapsed
        planned = pl_module.planned_steps
        if self.state.first_step_at is not None and steps >= MIN_TIMED_STEPS:
            self._per_step = (elapsed - self.state.first_step_at) / (steps - 1)
            reserve = self.validation_seconds() if self.validates() else 0.0
            planned = plan_steps(steps, elapsed, self.state.first_step_at, self.budget,
                                 reserve, self._cap(trainer))
            self._horizon = min(self.budget, elapsed + (planned - steps) * self._per_step)
        if elapsed >= self.budget:
            planned = steps
        planned = int(trainer.strategy.broadcast(planned, src=0))
        pl_module.planned_steps = self.state.planned = max(planned, steps)
        if steps >= planned:
            trainer.should_stop = True

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = self.elapsed()
        if self._epoch_started is not None:
            self._epoch_seconds = now - self._epoch_started
        self._epoch_started = now
        if not self.space_validations:
            return
        # Due when, by this epoch's end, a validation gap will have passed since the last one.
        since = now + self._epoch_seconds - self.state.last_validation_end
        due = self._per_step is not None and self.validates() and (
            since >= validation_gap(self._horizon, self.validation_seconds()))
        due = bool(trainer.strategy.broadcast(due, src=0))
        # Lightning validates after epoch e when (e + 1) % check_val_every_n_epoch == 0.
        trainer.check_val_every_n_epoch = 1 if due else trainer.current_epoch + 2

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validation_start = time.monotonic()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self._validation_start is None:
            return
        self.state.last_validation_seconds = time.monotonic() - self._validation_start
        self.state.last_validation_end = self.elapsed()
        self._validation_start = None

    def validation_seconds(self) -> float:
        """The last validation's duration, or its prediction from the step cost."""
        if self.state.last_validation_seconds is not None:
            return self.state.last_validation_seconds
        return self.validation_steps * (self._per_step or 0.0)

    def validates(self) -> bool:
        """Whether validation is affordable: two of them fit in a fifth of the time.

        When it is not (large images on a slow machine), the run does not validate: with
        the schedule annealed to the budget's end the final weights become the best
        checkpoint, and the threshold sweep after training scores them on validation.
        """
        if not self.space_validations:
            return True
        return 2 * self.validation_seconds() <= VALIDATION_TIME_SHARE * self._horizon

    def _cap(self, trainer: L.Trainer) -> int | None:
        if self.epoch_cap is None:
            return None
        return self.epoch_cap * max(1, trainer.num_training_batches)
