"""Many files at once: the same outputs as one process, bad files reported, resume."""

from __future__ import annotations

import contextlib
import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from celltune.cli import app
from celltune.errors import RunError
from celltune.inference import batch
from celltune.inference.batch import predict_files
from test_predict import brightness_predictor, discs, write_images
from tiny_runs import make_run


def _inputs(folder: Path) -> Path:
    """a.tif and c.png (discs, the second flipped) and b.tif, which is not a TIFF."""
    write_images(folder, ["a.tif"])
    write_images(folder, ["c.png"], discs()[::-1].copy())
    (folder / "b.tif").write_bytes(b"II*\x00 definitely not a tiff")
    return folder


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "counts.csv").open() as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


def _assert_same_outputs(one: Path, other: Path) -> None:
    names = sorted(p.name for p in one.iterdir() if p.name != "predict_args.json")
    assert names == sorted(p.name for p in other.iterdir() if p.name != "predict_args.json")
    for name in names:
        if name.endswith(".tif"):
            np.testing.assert_array_equal(tifffile.imread(one / name), tifffile.imread(other / name))
        elif name.endswith(".png"):
            np.testing.assert_array_equal(np.asarray(Image.open(one / name)),
                                          np.asarray(Image.open(other / name)))
    assert _rows(one) == _rows(other)
    assert (one / "failures.csv").read_text() == (other / "failures.csv").read_text()


@contextlib.contextmanager
def _no_dask(workers: int = 1, scheduler: str | None = None):
    yield None  # as without dask's distributed: threads of this process


@pytest.fixture(params=["threads", "dask threads"])
def fan_out_kwargs(request, monkeypatch):
    """Parallel predict_files options: plain threads, or an in-process Dask cluster."""
    if request.param == "threads":
        monkeypatch.setattr(batch, "dask_client", _no_dask)
        yield {"workers": 2}
        return
    distributed = pytest.importorskip("distributed", reason="needs dask's distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        yield {"scheduler": cluster.scheduler_address}


def test_files_fanned_out_give_the_outputs_of_one_process(tmp_path, fan_out_kwargs):
    folder = _inputs(tmp_path / "in")
    one = predict_files(brightness_predictor(), [folder], tmp_path / "one", save_prob=True,
                        cells_csv=True, progress=False)
    many = predict_files(brightness_predictor(), [folder], tmp_path / "many", save_prob=True,
                         cells_csv=True, progress=False, **fan_out_kwargs)
    assert [i.name for i in many.images] == [i.name for i in one.images] == ["a", "c"]
    [failure] = many.failures
    assert failure.path.endswith("b.tif") and "b.tif" in failure.error
    assert "1 failed: b.tif" in many.summary()
    _assert_same_outputs(tmp_path / "one", tmp_path / "many")


def test_a_lost_worker_fails_only_its_file(tmp_path, monkeypatch):
    monkeypatch.setattr(batch, "dask_client", _no_dask)
    real = batch.predict_file_job

    def dies_on_c(predictor, job, item):
        if item[1] == "c":
            raise OSError("worker lost")
        return real(predictor, job, item)

    monkeypatch.setattr(batch, "predict_file_job", dies_on_c)
    result = predict_files(brightness_predictor(), [_inputs(tmp_path / "in")], tmp_path / "out",
                           progress=False, workers=2)
    assert [i.name for i in result.images] == ["a"]
    errors = {Path(f.path).name: f.error for f in result.failures}
    assert "c.png: its worker failed (OSError: worker lost)" in errors["c.png"]
    assert "b.tif" in errors


@pytest.mark.parametrize("workers", [1, 2])
def test_resume_predicts_only_the_unfinished_files(tmp_path, monkeypatch, workers):
    monkeypatch.setattr(batch, "dask_client", _no_dask)
    folder = tmp_path / "in"
    write_images(folder, ["a.tif", "b.tif", "c.tif"])
    out = tmp_path / "out"
    predict_files(brightness_predictor(), [folder], out, progress=False)
    (out / "b_overlay.png").unlink()  # b was interrupted before its last output
    real, ran = batch.predict_file, []

    def spy(predictor, path, *args, **kwargs):
        ran.append(path.name)
        return real(predictor, path, *args, **kwargs)

    monkeypatch.setattr(batch, "predict_file", spy)
    again = predict_files(brightness_predictor(), [folder], out, progress=False, resume=True,
                          workers=workers)
    assert ran == ["b.tif"] and [p.name for p in again.skipped] == ["a.tif", "c.tif"]
    assert [r["image"] for r in _rows(out)] == ["a", "b", "c"]
    assert (out / "b_overlay.png").exists() and "(2 already done)" in again.summary()
    with pytest.raises(RunError, match=r"other settings \(predictor\).*--overwrite"):
        predict_files(brightness_predictor(threshold=0.9), [folder], out, progress=False,
                      resume=True)


def test_cli_fans_files_out_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr(batch, "dask_client", _no_dask)
    run = make_run(tmp_path)
    folder = _inputs(tmp_path / "in")
    argv = ["predict", str(run), str(folder), "--out", str(tmp_path / "out"), "--no-progress",
            "--device", "cpu", "--workers", "2"]
    first = CliRunner().invoke(app, argv)
    assert first.exit_code == 1 and "b.tif" in first.output and "2 of 3" in first.output
    again = CliRunner().invoke(app, [*argv, "--resume"])
    assert again.exit_code == 1 and "(2 already done)" in again.output


def test_two_worker_processes_give_the_outputs_of_one_process(tmp_path):
    """A LocalCluster of 2 processes (12 s in all on the shared 2-core VM, most of it the
    cluster's start); the predictor comes from the run folder in this process and reaches
    each worker once."""
    pytest.importorskip("distributed", reason="needs dask's distributed")
    run = make_run(tmp_path)
    folder = _inputs(tmp_path / "in")
    one = predict_files(run, [folder], tmp_path / "one", device="cpu", progress=False)
    two = predict_files(run, [folder], tmp_path / "two", device="cpu", progress=False,
                        workers=2)
    assert [Path(f.path).name for f in two.failures] == ["b.tif"]
    assert [i.name for i in two.images] == ["a", "c"]
    assert one.summary().replace("one", "two") == two.summary()
    _assert_same_outputs(tmp_path / "one", tmp_path / "two")
