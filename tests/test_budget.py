"""A time budget is filled: steps planned from their cost, the schedule annealed to the end."""

from __future__ import annotations

import csv
import math

import pytest
import yaml

from celltune.config import RunConfig
from celltune.data.synthetic import ensure_dataset
from celltune.training.budget import BudgetState, TimeBudget, plan_steps, validation_gap
from celltune.training.fit import fit

BUDGET_MINUTES = 0.25  # 15 s: long enough for many tiny steps and several validations


def test_plan_extends_the_measured_step_cost_to_the_budget():
    # 10 steps in 30 s, the first ending at 3 s: 3 s per step after it; 84 s remain after
    # the 6 s reserve, so 28 more steps.
    assert plan_steps(10, 30.0, 3.0, budget=120.0, reserve=6.0) == 38
    assert plan_steps(10, 30.0, 3.0, budget=120.0, reserve=6.0, cap=20) == 20
    # Budget already used: no more steps.
    assert plan_steps(10, 130.0, 3.0, budget=120.0, reserve=0.0) == 10


def test_the_first_steps_set_up_cost_is_left_out():
    # A 20 s first step (allocations, caches) then 1 s steps: the plan uses 1 s per step.
    assert plan_steps(5, 24.0, 20.0, budget=60.0, reserve=0.0) == 5 + 36


def test_validations_are_spaced_by_a_sixth_of_the_time_or_by_their_cost():
    assert validation_gap(600.0, None) == pytest.approx(100.0)
    assert validation_gap(600.0, 5.0) == pytest.approx(100.0)  # cheap: a sixth
    assert validation_gap(600.0, 40.0) == pytest.approx(200.0)  # costly: at most 20% of time


def test_time_spent_before_a_resume_counts():
    budget = TimeBudget(1.0, started=0.0)
    budget.state.last_validation_seconds, budget.state.planned = 2.5, 120
    saved = budget.state_dict()
    assert saved["spent"] > 0 and saved["last_validation_seconds"] == 2.5
    resumed = TimeBudget(1.0)
    resumed.load_state_dict(saved)
    assert resumed.elapsed() >= saved["spent"]
    assert isinstance(resumed.state, BudgetState) and resumed.state.last_validation_seconds == 2.5
    assert resumed.state.planned == 120  # the schedule continues where it was


@pytest.fixture(scope="module")
def forty_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("forty")
    # 50 images: the 20% test share leaves 40 for training and validation.
    ensure_dataset(root, n=50, size=96, seed=3, png_fraction=0.0)
    return root


def _config(root, **train):
    return RunConfig.model_validate({
        "name": "budget",
        "data": {"root": str(root), "crop": 64, "test_fraction": 0.2},
        "model": {"name": "unet", "options": {"tiny": True}},
        "train": {"batch_size": 4, "channels_last": False, **train},
        "eval": {"bootstrap": 0},
    })


@pytest.fixture(scope="module")
def budget_run(forty_images, tmp_path_factory):
    import time

    out = tmp_path_factory.mktemp("budget") / "run"
    started = time.monotonic()
    result = fit(_config(forty_images, max_time=BUDGET_MINUTES), out, progress=False)
    return result, time.monotonic() - started


def test_a_40_image_set_uses_at_least_90_percent_of_the_budget(budget_run):
    result, seconds = budget_run
    assert len(result.splits.train) + len(result.splits.val) == 40
    assert seconds >= 0.9 * 60 * BUDGET_MINUTES
    # It stops too: the final validation is reserved for, the budget is not a floor only.
    assert seconds < 3 * 60 * BUDGET_MINUTES


def test_the_learning_rate_is_annealed_by_the_end_of_the_budget(budget_run):
    result, _ = budget_run
    rows = list(csv.DictReader((result.run.path / "metrics.csv").open()))
    lrs = [float(r["lr"]) for r in rows]
    lr = result.config.train.lr
    assert max(lrs) > 0.5 * lr  # it trained at full rate on the way
    assert lrs[-1] <= 0.05 * lr  # and ended near the cosine floor, not half-way down


def test_validations_are_spread_over_the_budget_and_the_last_weights_validated(budget_run):
    result, _ = budget_run
    rows = list(csv.DictReader((result.run.path / "metrics.csv").open()))
    validated = [i for i, r in enumerate(rows) if not math.isnan(float(r["val_dice"]))]
    assert len(validated) >= 3
    assert validated[-1] == len(rows) - 1
    assert len(validated) < len(rows)  # tiny epochs: not every one is validated


def test_config_records_that_the_budget_decides_the_length(budget_run):
    result, _ = budget_run
    saved = yaml.safe_load(result.run.config_path.read_text())
    assert saved["train"]["epochs"] is None
    assert "budget is used" in saved["derived"]["train.epochs"]


def test_given_epochs_cap_a_budget_and_the_schedule_ends_with_them(forty_images, tmp_path):
    result = fit(_config(forty_images, max_time=5, epochs=2, val_every=1), tmp_path / "r",
                 progress=False)
    rows = list(csv.DictReader((result.run.path / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert float(rows[-1]["lr"]) <= 0.05 * result.config.train.lr


def test_the_epoch_line_shows_validation_only_when_measured(forty_images, tmp_path, capsys):
    fit(_config(forty_images, epochs=3, val_every=2), tmp_path / "r", progress=True)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if " epoch " in ln]
    assert len(lines) == 3
    assert ["val_dice" in ln for ln in lines] == [False, True, False]
    assert all(ln.split()[2] == f"{i}/3" for i, ln in enumerate(lines, 1))
    assert not any("% used" in ln for ln in lines)  # no time budget given


def test_the_epoch_line_says_how_much_of_the_budget_is_used(forty_images, tmp_path, capsys):
    fit(_config(forty_images, max_time=5, epochs=2, val_every=1), tmp_path / "r",
        progress=True)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if " epoch " in ln]
    assert len(lines) == 2 and all(ln.endswith("% used") for ln in lines)


def test_without_a_budget_epochs_follow_the_set_size(forty_images):
    from celltune.data.derive import derive_training

    # One crop per training image and epoch: 34 images need 59 epochs to see 2000 crops.
    config, reasons = derive_training(_config(forty_images), n_train=34)
    assert config.train.epochs == math.ceil(2000 / 34) == 59
    assert "34 training images" in reasons["train.epochs"]


def test_validation_is_skipped_when_two_would_not_fit_a_fifth_of_the_budget():
    budget = TimeBudget(1.0, validation_steps=100.0)
    budget._per_step = 1.0  # 100 s per validation against a 60 s budget
    assert not budget.validates()
    budget.validation_steps = 5.0  # 2 x 5 s <= 20% of 60 s
    assert budget.validates()
    budget.state.last_validation_seconds = 7.0  # measured beats predicted
    assert budget.validation_seconds() == 7.0 and not budget.validates()


def test_without_affordable_validation_the_final_weights_are_the_checkpoint(
        forty_images, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr("celltune.training.fit.validation_cost", lambda *a: 1e9)
    result = fit(_config(forty_images, max_time=0.1), tmp_path / "r", progress=False)
    rows = list(csv.DictReader((result.run.path / "metrics.csv").open()))
    assert all(math.isnan(float(r["val_dice"])) for r in rows)
    best = torch.load(result.run.checkpoint("best"), map_location="cpu", weights_only=False)
    last = torch.load(result.run.checkpoint("last"), map_location="cpu", weights_only=False)
    assert best["global_step"] == last["global_step"] == max(best["global_step"], 1)


def test_last_checkpoint_is_written_at_most_once_a_period_and_at_the_end(monkeypatch):
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import ModelCheckpoint

    from celltune.training.callbacks import LastCheckpoint

    writes = []
    monkeypatch.setattr(ModelCheckpoint, "on_train_epoch_end",
                        lambda self, trainer, module: writes.append(trainer.current_epoch))
    every_epoch, periodic = LastCheckpoint(min_seconds=0.0), LastCheckpoint(min_seconds=3600.0)
    for epoch in range(5):
        trainer = SimpleNamespace(max_epochs=-1, current_epoch=epoch, should_stop=epoch == 4)
        every_epoch.on_train_epoch_end(trainer, None)
        periodic.on_train_epoch_end(trainer, None)
    assert writes == [0, 1, 2, 3, 4, 4]  # every epoch; the periodic one only at the stop


def test_epochs_null_without_a_budget_is_derived_not_endless(forty_images):
    from celltune.data.derive import derive_training

    config = _config(forty_images, epochs=None)  # given as null, no max_time
    assert derive_training(config, n_train=34)[0].train.epochs == 59
    budgeted = _config(forty_images, epochs=None, max_time=2)
    assert derive_training(budgeted, n_train=34)[0].train.epochs is None
