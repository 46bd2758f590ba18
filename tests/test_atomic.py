"""Nothing lost: outputs are replaced atomically and existing folders are never overwritten silently.

Every writer goes through ``io.atomic_path`` (temp file beside the target, then rename). The
tests make the last step or the serialiser itself fail half-way and check that the previous
file is intact and no temp file remains.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch
from matplotlib.figure import Figure

from celltune import io
from celltune.config import RunConfig, StudyConfig, load_run_config, save_run_config
from celltune.data.samples import Sample, Splits
from celltune.data.synthetic import MANIFEST, ensure_dataset, write_dataset
from celltune.errors import DataError, OutputError, RunError
from celltune.evaluation.threshold import sweep
from celltune.rundir import RunDir
from celltune.training.callbacks import AtomicCheckpointIO, MetricsCSV
from celltune.training.fit import prepare_run_dir
from celltune.viz.curves import save_figure


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


def _threshold_result():
    prob = np.array([[0.1, 0.4], [0.6, 0.9]])
    return sweep([prob], [prob > 0.5], start=0.1, stop=0.9, step=0.1, refine=False)


def _metrics(run: Path) -> MetricsCSV:
    cb = MetricsCSV(RunDir(run))
    cb.rows = [
        {
            "epoch": 0,
            "train_loss": 1.0,
            "val_loss": 0.9,
            "val_dice": 0.5,
            "lr": 1e-3,
            "seconds": 1.0,
        }
    ]
    return cb


# Each writer: (file name, function writing a *new* version to the path).
WRITERS: dict[str, tuple[str, Any]] = {
    "text": ("notes.txt", lambda p: io.write_text(p, "new")),
    "tiff": ("mask.tif", lambda p: io.write_tiff(p, np.ones((8, 8), np.uint8))),
    "png": ("overlay.png", lambda p: io.write_png(p, np.ones((8, 8), np.uint8))),
    "config": ("config.yaml", lambda p: save_run_config(RunConfig(name="new"), p)),
    "splits": ("splits.json", lambda p: Splits(train=[Sample(Path("a.tif"), None)]).save(p)),
    "threshold": ("threshold.json", lambda p: _threshold_result().save(p)),
    "metrics": ("metrics.csv", lambda p: _metrics(p.parent).write()),
    "checkpoint": ("last.ckpt", lambda p: AtomicCheckpointIO().save_checkpoint({"w": 1}, p)),
    "figure": ("loss.png", lambda p: save_figure(Figure(figsize=(1, 1)), p)),
}


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_failed_rename_keeps_old_file(tmp_path: Path, monkeypatch, kind: str) -> None:
    name, write = WRITERS[kind]
    target = tmp_path / "run" / name
    target.parent.mkdir()
    target.write_bytes(b"old content")

    def refuse(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OutputError, match="No space left on device") as err:
        write(target)
    assert str(target) in str(err.value)
    assert target.read_bytes() == b"old content"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_writers_replace_the_file(tmp_path: Path, kind: str) -> None:
    name, write = WRITERS[kind]
    target = tmp_path / "run" / name
    target.parent.mkdir()
    target.write_bytes(b"old content")
    write(target)
    assert target.read_bytes() != b"old content"
    assert _leftovers(tmp_path) == []


def test_serialiser_failing_midway_keeps_old_tiff(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "mask.tif"
    io.write_tiff(target, np.full((8, 8), 7, np.uint8))

    def half_then_crash(path: Any, data: Any, **kwargs: Any) -> None:
        Path(path).write_bytes(b"II*\x00 half a TIFF")
        raise MemoryError("simulated crash while writing")

    monkeypatch.setattr(tifffile, "imwrite", half_then_crash)
    with pytest.raises(MemoryError):
        io.write_tiff(target, np.zeros((8, 8), np.uint8))
    monkeypatch.undo()
    assert (tifffile.imread(target) == 7).all()
    assert _leftovers(tmp_path) == []


def test_checkpoint_failing_midway_keeps_old_checkpoint(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"epoch": 3}, target)
    real_save = torch.save

    def half_then_crash(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        real_save({"epoch": "partial"}, f)
        raise KeyboardInterrupt  # Ctrl+C in the middle of writing

    monkeypatch.setattr(torch, "save", half_then_crash)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"epoch": 4}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=False) == {"epoch": 3}
    assert _leftovers(tmp_path) == []


def test_metrics_rows_survive_a_failed_write(tmp_path: Path, monkeypatch) -> None:
    cb = _metrics(tmp_path)
    cb.write()
    cb.rows.append({**cb.rows[0], "epoch": 1})
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(5, "I/O error")))
    with pytest.raises(OutputError):
        cb.write()
    monkeypatch.undo()
    assert [r["epoch"] for r in RunDir(tmp_path).read_metrics()] == [0.0]


# --- refusing to overwrite ----------------------------------------------------------------------


def test_run_folder_is_not_overwritten_silently(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.csv").write_text("precious")
    with pytest.raises(RunError, match="pass --resume to continue it or --overwrite"):
        prepare_run_dir(out, resume=False, overwrite=False)
    assert (out / "metrics.csv").read_text() == "precious"


def test_resume_needs_a_run_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "stray.txt").write_text("x")
    with pytest.raises(RunError, match=r"cannot resume, no config\.yaml"):
        prepare_run_dir(out, resume=True, overwrite=False)
    assert (out / "stray.txt").is_file()


def test_resume_keeps_and_overwrite_replaces(tmp_path: Path) -> None:
    out = tmp_path / "run"
    save_run_config(RunConfig(name="kept"), out / "config.yaml")
    assert prepare_run_dir(out, resume=True, overwrite=False) == out
    assert load_run_config(out / "config.yaml").name == "kept"
    prepare_run_dir(out, resume=False, overwrite=True)
    assert list(out.iterdir()) == []


def test_empty_or_missing_folder_is_fine(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert prepare_run_dir(tmp_path / "empty", resume=False, overwrite=False).is_dir()
    assert prepare_run_dir(tmp_path / "new" / "run", resume=False, overwrite=False).is_dir()


def test_study_folder_is_not_overwritten_silently(tmp_path: Path) -> None:
    from celltune.workflows.study import run_study

    out = tmp_path / "study"
    out.mkdir()
    (out / "results.md").write_text("precious")
    study = StudyConfig.model_validate({"rows": [{"name": "a"}]})
    with pytest.raises(RunError, match="pass --resume to continue the study or --overwrite"):
        run_study(study, out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["results.md"]


def test_dataset_folder_is_not_overwritten_silently(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    out.mkdir()
    (out / "mine.txt").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        write_dataset(out, n=3, size=32)
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


def test_interrupted_synthetic_generation_is_redone(tmp_path: Path) -> None:
    """A kill during generation leaves images but no manifest; resume must not reuse them."""
    reference = tmp_path / "ref"
    write_dataset(reference, n=4, size=32, seed=5)
    partial = tmp_path / "partial"
    write_dataset(partial, n=4, size=32, seed=5)
    (partial / MANIFEST).unlink()
    for path in sorted((partial / "images").iterdir())[2:]:
        path.unlink()  # as if killed after two images
    ensure_dataset(partial, n=4, size=32, seed=5)
    files = sorted(p.relative_to(partial) for p in partial.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(reference) for p in reference.rglob("*") if p.is_file())
    for name in files:
        assert (partial / name).read_bytes() == (reference / name).read_bytes()


def test_complete_synthetic_dataset_is_reused(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_dataset(root, n=3, size=32, seed=1)
    stamp = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    ensure_dataset(root, n=3, size=32, seed=1)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == stamp
