"""Interrupted runs resume from the last checkpoint and end exactly where an uninterrupted run ends.

An interruption is a real signal: SIGINT or SIGTERM sent to the test process from inside a
training step (so it lands mid-epoch), or SIGKILL/SIGTERM/SIGINT sent to a
``python -m celltune.cli train`` subprocess once an epoch checkpoint exists and the next
epoch has begun. The resumed run must reproduce the reference's metrics.csv (all but the
timing column), threshold.json and test summary.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from celltune.config import RunConfig, StudyConfig
from celltune.errors import Interrupted
from celltune.rundir import RunDir
from celltune.training.module import SegmentationModule
from celltune.workflows.run import run_pipeline

DONE_FILE = RunDir(".").done_path.name

EPOCHS = 4
CONFIG: dict[str, Any] = {
    "data": {
        "synthetic": {"n": 8, "size": 64, "seed": 1},
        "val": 2,
        "test_fraction": 0.25,
        "crop": 32,
        "samples_per_epoch": 32,
    },
    "model": {"name": "unet_plain", "options": {"tiny": True}},
    "train": {"epochs": EPOCHS, "batch_size": 4},
    "eval": {"bootstrap": 20},
}
STEPS = 32 // 4  # optimiser steps per epoch


@pytest.fixture(autouse=True)
def one_thread():
    """Same thread count in every run: float sums depend on it, exact comparison does not."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def outcome(run: Path) -> dict[str, Any]:
    """What must not change when a run is interrupted and resumed."""
    rows = [
        {k: v for k, v in r.items() if k != "seconds"} for r in RunDir(run).read_metrics()
    ]
    summary = json.loads((run / "eval" / "test" / "summary.json").read_text())
    summary.pop("data_root")  # each run generated its synthetic data in its own folder
    return {
        "metrics": rows,
        "threshold": json.loads((run / "threshold.json").read_text()),
        "summary": summary,
        "per_image": (run / "eval" / "test" / "per_image.csv").read_text(),
    }


def assert_same(got: Any, want: Any, where: str = "") -> None:
    """Equal, with floats within 1e-6 (NaN equals NaN)."""
    if isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for key in want:
            assert_same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert math.isclose(got, want, abs_tol=1e-6) or (math.isnan(got) and math.isnan(want)), (
            f"{where}: {got} != {want}"
        )
    else:
        assert got == want, where


def _global_step(run: Path) -> int:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]


def no_temp_files(run: Path) -> bool:
    return not [p for p in run.rglob("*") if ".tmp" in p.name]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("reference") / "run"
    run_pipeline(RunConfig.model_validate(CONFIG), run, progress=False)
    return outcome(run)


@pytest.fixture
def ctrl_c_raises() -> Any:
    """SIGINT handled as in a terminal, even in a session started with SIGINT ignored.

    A shell starts background jobs with SIGINT ignored, and Python then keeps it ignored,
    so a signal sent by the test would never arrive; celltune rightly honours that setting.
    """
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _signal_in_step(monkeypatch: pytest.MonkeyPatch, sig: int, epoch: int, step: int) -> None:
    """Send ``sig`` to this process from inside training step ``step`` of ``epoch``, once."""
    original = SegmentationModule.training_step
    sent = []

    def step_then_signal(self: SegmentationModule, batch: Any, batch_idx: int) -> Any:
        if self.current_epoch == epoch and batch_idx == step and not sent:
            sent.append(True)
            os.kill(os.getpid(), sig)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(SegmentationModule, "training_step", step_then_signal)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_epoch_then_resume(
    tmp_path, monkeypatch, reference, sig, code, ctrl_c_raises
) -> None:
    run = tmp_path / "run"
    cfg = RunConfig.model_validate(CONFIG)
    handler = signal.getsignal(signal.SIGINT)
    _signal_in_step(monkeypatch, sig, epoch=2, step=3)
    with pytest.raises(Interrupted) as err:
        run_pipeline(cfg, run, progress=False)
    assert err.value.exit_code == code
    assert str(err.value) == (
        f"{run}: training interrupted by {signal.Signals(sig).name} in epoch 3; "
        "continue from the last checkpoint with --resume."
    )
    assert signal.getsignal(signal.SIGINT) is handler  # Lightning leaves SIGINT ignored
    assert [r["epoch"] for r in RunDir(run).read_metrics()] == [0, 1]
    assert _global_step(run) == 2 * STEPS  # the checkpoint of the last complete epoch
    assert not (run / DONE_FILE).exists() and no_temp_files(run)

    monkeypatch.undo()
    run_pipeline(cfg, run, resume=True, progress=False)
    assert_same(outcome(run), reference)


def test_interrupted_after_training_only_evaluates(tmp_path, reference) -> None:
    """Killed during threshold/evaluation: resume finishes them without training again."""
    run = tmp_path / "run"
    cfg = RunConfig.model_validate(CONFIG)
    run_pipeline(cfg, run, progress=False)
    for name in (DONE_FILE, "threshold.json"):
        (run / name).unlink()
    (run / "eval" / "test" / "summary.json").unlink()
    best = (run / "checkpoints" / "best.ckpt").read_bytes()
    run_pipeline(cfg, run, resume=True, progress=False)
    assert (run / "checkpoints" / "best.ckpt").read_bytes() == best
    assert_same(outcome(run), reference)


# --- the console script, killed for real ---------------------------------------------------------


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="1000")


def _train_cmd(config: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "celltune.cli", "train", str(config), "--out", str(out), *extra]


def _rows(run: Path) -> int:
    return len(RunDir(run).read_metrics())


@pytest.fixture(scope="module")
def cli_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Longer epochs (about a second each) so that the kill lands inside one.
    cfg = {**CONFIG, "data": {**CONFIG["data"], "crop": 64, "samples_per_epoch": 96}}
    path = tmp_path_factory.mktemp("cli") / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def cli_reference(cli_config: Path) -> dict[str, Any]:
    run = cli_config.parent / "reference"
    subprocess.run(
        _train_cmd(cli_config, run), env=_env(), check=True, capture_output=True, timeout=600
    )
    return outcome(run)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_cli_train_killed_mid_epoch_resumes(
    tmp_path, cli_config, cli_reference, sig, ctrl_c_raises
) -> None:
    # ctrl_c_raises: a caught signal is reset to its default in the child at exec, an ignored
    # one would stay ignored there.
    run = tmp_path / "run"
    proc = subprocess.Popen(
        _train_cmd(cli_config, run),
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 300
    while _rows(run) < 2 or not (run / "checkpoints" / "last.ckpt").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, "training ended too early"
        time.sleep(0.02)
    time.sleep(0.3)  # into epoch 3: its checkpoint and metrics row come about a second later
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=120)
    assert _rows(run) == 2, "the signal should have landed inside epoch 3"
    assert no_temp_files(run)
    assert _global_step(run) == 2 * 96 // 4
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 128 + sig
        assert "Traceback" not in output
        assert f"error: {run}: training interrupted by {signal.Signals(sig).name}" in output

    resumed = subprocess.run(
        _train_cmd(cli_config, run, "--resume"),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Traceback" not in resumed.stderr and "Checkpoint directory" not in resumed.stderr
    assert_same(outcome(run), cli_reference)


# --- a study interrupted in its second row ---------------------------------------------------------


def test_study_interrupted_in_second_row_resumes(tmp_path, monkeypatch, ctrl_c_raises) -> None:
    from celltune.workflows.study import run_study

    defaults = {k: v for k, v in CONFIG.items() if k != "model"}
    study = StudyConfig.model_validate(
        {
            "defaults": defaults,
            "rows": [
                {"name": "plain", "model": CONFIG["model"]},
                {"name": "plain_bn", "model": {"name": "unet_plain_bn", "options": {"tiny": True}}},
            ],
        }
    )
    run_study(study, tmp_path / "reference", progress=False)

    out = tmp_path / "study"
    original = SegmentationModule.training_step

    def interrupt_second_row(self: SegmentationModule, batch: Any, batch_idx: int) -> Any:
        if self.model_cfg.name == "unet_plain_bn" and self.current_epoch == 1 and batch_idx == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(SegmentationModule, "training_step", interrupt_second_row)
    with pytest.raises(Interrupted):
        run_study(study, out, progress=False)
    monkeypatch.undo()
    first_done = (out / "plain" / DONE_FILE).stat().st_mtime_ns
    assert not (out / "plain_bn" / DONE_FILE).exists()

    run_study(study, out, resume=True, progress=False)
    assert (out / "plain" / DONE_FILE).stat().st_mtime_ns == first_done  # not retrained
    for row in ("plain", "plain_bn"):
        assert_same(outcome(out / row), outcome(tmp_path / "reference" / row), row)
    assert (out / "report.html").is_file()
