"""Distributed training: Lightning DDP on 2 CPU processes (gloo on 127.0.0.1).

What "matches the single-process result" means here: DDP with batch ``b`` per process on
``w`` processes is the same optimisation as one process with batch ``w * b``, when

- every optimiser step sees the same items: the training sampler shards the items so that
  global batch ``k`` holds exactly the items of single-process batch ``k`` (tested exactly
  below), and the learning-rate schedule counts the steps each process really takes;
- the loss is a per-pixel mean (``bce``): averaging the processes' gradients then equals the
  gradient of the whole batch. Dice pooled over the batch and BatchNorm statistics are
  per-process, so with those the two runs differ by more than rounding;
- validation sees every image in every process (no padded duplicates).

The remaining difference is floating-point summation order (gradients are summed across
processes): on this configuration the weights after 24 steps differ by at most 6e-7 and the
metrics agree to 7 digits. AdamW can amplify such rounding on near-zero gradients in longer
runs, as much as changing the thread count of a single process does.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from celltune.config import RunConfig
from celltune.data.dataset import CropDataset, EpochSampler
from celltune.data.samples import Sample
from celltune.models.checkpoint import load_model_from_checkpoint
from celltune.rundir import RunDir
from celltune.training.distributed import steps_per_process
from celltune.workflows.run import run_pipeline

EPOCHS = 3
CONFIG: dict[str, Any] = {
    "data": {
        "synthetic": {"n": 8, "size": 64, "seed": 1},
        "val": 2,
        "test_fraction": 0.25,
        "crop": 32,
        "samples_per_epoch": 32,
    },
    "model": {"name": "unet_plain", "options": {"tiny": True}},
    "train": {"epochs": EPOCHS, "batch_size": 4, "loss": "bce"},
    "eval": {"bootstrap": 20},
}


# --- the sampler: same batches, deterministic split -----------------------------------------------


def _as_rank(monkeypatch: pytest.MonkeyPatch, rank: int, world: int) -> None:
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: rank)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: world)


def _batches(sampler: EpochSampler, batch: int) -> list[list[tuple[int, int]]]:
    items = list(sampler)
    return [items[i : i + batch] for i in range(0, len(items), batch)]


@pytest.mark.parametrize(("length", "world", "batch"), [(16, 2, 2), (24, 3, 2), (12, 2, 3)])
def test_global_batches_equal_single_process_batches(monkeypatch, length, world, batch) -> None:
    single = EpochSampler(length, shard=True)
    single.set_epoch(5)
    expected = [sorted(b) for b in _batches(single, world * batch)]
    per_rank = []
    for rank in range(world):
        _as_rank(monkeypatch, rank, world)
        sampler = EpochSampler(length, shard=True)
        sampler.set_epoch(5)
        assert len(sampler) == length // world
        per_rank.append(_batches(sampler, batch))
    monkeypatch.undo()
    merged = [sorted(x for r in per_rank for x in r[k]) for k in range(len(per_rank[0]))]
    assert merged == expected
    assert all(epoch == 5 for b in merged for epoch, _ in b)


def test_uneven_items_are_padded_to_equal_shares(monkeypatch) -> None:
    shares = []
    for rank in range(2):
        _as_rank(monkeypatch, rank, 2)
        sampler = EpochSampler(5, shard=True)
        shares.append([i for _, i in sampler])
        assert len(sampler) == 3  # equal counts, or the processes would deadlock
    assert shares == [[0, 2, 4], [1, 3, 0]]  # item 0 repeats to fill the last slot


def test_unsharded_sampler_ignores_the_process_group(monkeypatch) -> None:
    _as_rank(monkeypatch, 1, 2)
    sampler = EpochSampler(4)
    assert [i for _, i in sampler] == [0, 1, 2, 3] and len(sampler) == 4


def test_lightning_sets_the_epoch_on_the_loader_sampler(tmp_path) -> None:
    from lightning.fabric.utilities.data import _set_sampler_epoch

    from celltune.data.synthetic import write_dataset

    write_dataset(tmp_path / "d", n=3, size=32, seed=0, png_fraction=0.0)
    samples = [
        Sample(p, tmp_path / "d" / "labels" / f"{p.stem}_label.tiff")
        for p in sorted((tmp_path / "d" / "images").glob("*.tif"))
    ]
    ds = CropDataset(samples, crop=32, augment="aug1", cache=False)
    loader = DataLoader(ds, batch_size=3, sampler=ds.sampler(shard=True))
    _set_sampler_epoch(loader, 7)
    first = next(iter(loader))["image"]
    assert [e for e, _ in loader.sampler] == [7, 7, 7]
    expected = torch.stack([ds[(7, i)]["image"] for i in range(3)])
    assert torch.equal(first, expected)


@pytest.mark.parametrize(
    ("items", "batch", "drop_last", "world", "steps"),
    [
        (32, 4, True, 1, 8),
        (32, 2, True, 2, 8),
        (30, 4, True, 2, 3),
        (30, 4, False, 2, 4),
        (5, 2, False, 3, 1),
        (3, 8, True, 1, 1),
    ],
)
def test_steps_per_process(items, batch, drop_last, world, steps) -> None:
    assert steps_per_process(items, batch, drop_last, world) == steps


def test_worker_process_only_trains(tmp_path, monkeypatch) -> None:
    """Ranks > 0 return after fit: no threshold, evaluation, plots or done.json of their own."""
    import celltune.training.distributed as distributed
    import celltune.workflows.run as run_module

    monkeypatch.setattr(distributed, "process_rank", lambda: 1)
    monkeypatch.setattr(run_module, "fit", lambda config, out, **kw: Path(out))
    result = run_pipeline(RunConfig(), tmp_path / "run", progress=False)
    assert result.worker and result.summary == {}
    assert not (tmp_path / "run").exists()


# --- end to end: `celltune train --devices 2 --strategy ddp` -------------------------------------


def _metrics(run: Path) -> list[dict[str, float]]:
    return RunDir(run).read_metrics()


def test_ddp_two_cpu_processes_match_one(tmp_path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = run_pipeline(RunConfig.model_validate(CONFIG), tmp_path / "single", progress=False)
    finally:
        torch.set_num_threads(threads)

    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    run = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="1000")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "celltune.cli",
            "train",
            str(config),
            "--out",
            str(run),
            "--accelerator",
            "cpu",
            "--devices",
            "2",
            "--strategy",
            "ddp",
            "--batch-size",
            "2",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in output
    # Rank 0 alone reports, chooses the threshold, evaluates and writes.
    for epoch in range(1, EPOCHS + 1):
        assert output.count(f"ddp epoch {epoch}/{EPOCHS} ") == 1, output
    assert output.count("Run folder:") == 1 and output.count("unet_plain: threshold") == 1
    assert not [p for p in run.rglob("*") if ".tmp" in p.name]
    for name in ("done.json", "threshold.json", "eval/test/summary.json", "plots/loss.png"):
        assert (run / name).is_file(), name

    # A valid checkpoint, with as many optimiser steps as the single process took.
    _, hparams = load_model_from_checkpoint(run / "checkpoints" / "best.ckpt")
    assert hparams["model"]["name"] == "unet_plain" and hparams["train"]["batch_size"] == 2
    steps = [
        torch.load(r / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
        for r in (single.run_dir, run)
    ]
    assert steps == [EPOCHS * 8, EPOCHS * 8]
    reference, _ = load_model_from_checkpoint(single.run_dir / "checkpoints" / "last.ckpt")
    trained, _ = load_model_from_checkpoint(run / "checkpoints" / "last.ckpt")
    for (name, a), b in zip(
        reference.state_dict().items(), trained.state_dict().values(), strict=True
    ):
        # Measured: at most 6e-7 apart; one AdamW step moves a weight by up to lr = 1e-3.
        assert torch.allclose(a, b, atol=1e-4), name

    # The same schedule and, within rounding, the same losses and scores.
    a, b = _metrics(single.run_dir), _metrics(run)
    assert [r["lr"] for r in a] == pytest.approx([r["lr"] for r in b], rel=1e-12)
    for ra, rb in zip(a, b, strict=True):
        assert math.isclose(ra["train_loss"], rb["train_loss"], rel_tol=1e-4)
        assert math.isclose(ra["val_loss"], rb["val_loss"], rel_tol=1e-4)
        assert abs(ra["val_dice"] - rb["val_dice"]) < 1e-3
    ddp_summary = json.loads((run / "eval" / "test" / "summary.json").read_text())
    assert abs(ddp_summary["dice"] - single.summary["dice"]) < 1e-3


@pytest.mark.slow
def test_ddp_study_with_overwrite(tmp_path) -> None:
    """Workers re-run `celltune study` too: they train every row but never touch the folder."""
    study = {
        "name": "ddp",
        "defaults": {
            "data": CONFIG["data"],
            "train": {
                **CONFIG["train"],
                "epochs": 2,
                "batch_size": 2,
                "accelerator": "cpu",
                "devices": 2,
                "strategy": "ddp",
            },
            "eval": CONFIG["eval"],
        },
        "rows": [
            {"name": "plain", "model": CONFIG["model"]},
            {"name": "plain_bn", "model": {"name": "unet_plain_bn", "options": {"tiny": True}}},
        ],
    }
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(study))
    out = tmp_path / "study"
    out.mkdir()
    (out / "old.txt").write_text("replaced by --overwrite, once, by rank 0")
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="1000")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "celltune.cli",
            "study",
            str(config),
            "--out",
            str(out),
            "--overwrite",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.count("row 1/2") == 1 and output.count("row 2/2") == 1
    assert output.count("Report:") == 1 and "Traceback" not in output
    assert not (out / "old.txt").exists()
    for row in ("plain", "plain_bn"):
        assert (out / row / "done.json").is_file()
        assert len(_metrics(out / row)) == 2
    assert (out / "report.html").is_file()
