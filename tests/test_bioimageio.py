"""bioimage.io packages: a tiny trained run passes bioimageio.core's test offline and the
package, reloaded, gives the run's mask; the card holds the run's numbers; missing extra."""

from __future__ import annotations

import io
import socket
import sys
import warnings
import zipfile

import numpy as np
import pytest
import yaml

from celltune import cli
from celltune.config import RunConfig
from celltune.data.synthetic import write_dataset
from celltune.errors import ConfigError
from celltune.inference.predict import Predictor
from celltune.integrations.bioimageio import (
    INSTALL,
    MissingExtraError,
    cite_entry,
    export_bioimageio,
    fit_size,
    require_bioimageio,
)
from celltune.io import read_image, to_channels
from celltune.rundir import RunDir
from celltune.workflows.run import run_pipeline

NEEDS = "bioimageio.core is the optional extra celltune[bioimageio]"


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """No socket may connect while bioimageio runs; its cache goes under tmp. Yields the
    list of attempted connections (the tests assert it stays empty)."""
    pytest.importorskip("bioimageio.core", reason=NEEDS)
    from bioimageio.spec._internal._settings import settings

    attempts: list[tuple] = []

    def refuse(self, *args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in tests")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(settings, "cache_path", tmp_path_factory.mktemp("bioimageio-cache"))
        mp.setenv("BIOIMAGEIO_PERFORM_IO_CHECKS", "true")
        yield attempts


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run trained end to end on synthetic cells (validation images, test summary)."""
    root = tmp_path_factory.mktemp("data") / "synth"
    write_dataset(root, n=10, size=64, seed=5)
    cfg = RunConfig.model_validate({
        "name": "tiny",
        "data": {"root": str(root), "filter": "all", "val": 2, "test_fraction": 0.2,
                 "crop": 64, "samples_per_epoch": 8},
        "model": {"name": "unet", "options": {"tiny": True}},
        "train": {"epochs": 2, "batch_size": 4, "aug": "aug1"},
        "eval": {"bootstrap": 50},
    })
    return run_pipeline(cfg, tmp_path_factory.mktemp("runs") / "tiny", progress=False).run_dir


@pytest.fixture(scope="module")
def package(run, offline, tmp_path_factory):
    out = tmp_path_factory.mktemp("bio") / "model.zip"
    result = export_bioimageio(run, out, authors=["Test Author"],
                               cite=["Example et al. 2024|10.1000/xyz123"])
    assert result.path == out and out.is_file()
    return out


def _member(package, name: str) -> bytes:
    with zipfile.ZipFile(package) as zf:
        return zf.read(name)


def test_package_passes_bioimageio_core_test_offline(package, offline):
    from bioimageio.core import test_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = test_model(package)
    assert summary.status == "passed", summary.format()
    tested = " ".join(d.name for d in summary.details)
    for fmt in ("torchscript", "onnx", "pytorch_state_dict"):
        assert f"Reproduce test outputs from test inputs ({fmt})" in tested
    assert offline == []


def test_the_reloaded_package_predicts_the_runs_mask(package, run, offline):
    from bioimageio.core import load_model_description, predict

    descr = load_model_description(package)
    raw = np.load(io.BytesIO(_member(package, "test_input.npy")))
    # The test input is a real validation image of the run.
    val = RunDir(run).read_splits().val
    images = [to_channels(read_image(s.image), 1)[..., 0] for s in val]
    assert any(np.array_equal(raw[0, 0], img) for img in images)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sample = predict(model=descr, inputs={"image": raw})
    prob = np.asarray(sample.members["probability"].data)[0, 0]
    threshold = descr.config.celltune["threshold"]
    expected = Predictor.from_run(run, device="cpu").predict(raw[0].transpose(1, 2, 0))
    assert threshold == expected.threshold
    differ = (prob >= threshold) != expected.mask
    assert differ.mean() <= 1e-3
    assert np.all(np.abs(expected.probability[differ] - threshold) < 1e-4)
    assert np.abs(prob - expected.probability).max() < 1e-4
    assert offline == []


def test_the_description_states_axes_normalisation_and_fields(package):
    rdf = yaml.safe_load(_member(package, "rdf.yaml"))
    assert rdf["format_version"].startswith("0.5")
    (inp,), (out,) = rdf["inputs"], rdf["outputs"]
    assert [a.get("id", a["type"]) for a in inp["axes"]] == ["batch", "channel", "y", "x"]
    assert inp["axes"][2]["size"] == {"min": 32, "step": 32}
    # bioimageio.spec adds ensure_dtype float32 steps around them.
    scale, clip = [p for p in inp["preprocessing"] if p["id"] != "ensure_dtype"]
    assert scale["id"] == "scale_range" and clip["id"] == "clip"
    assert scale["kwargs"]["axes"] == ["y", "x"]
    assert (scale["kwargs"]["min_percentile"], scale["kwargs"]["max_percentile"]) == (1.0, 99.8)
    assert out["axes"][2]["size"] == {"tensor_id": "image", "axis_id": "y"}
    assert set(rdf["weights"]) == {"torchscript", "onnx", "pytorch_state_dict"}
    assert rdf["license"] == "MIT" and rdf["authors"] == [{"name": "Test Author"}]
    assert rdf["cite"][0]["doi"] == "10.1000/xyz123"
    assert {"threshold", "instances", "normalization"} <= set(rdf["config"]["celltune"])


def test_the_card_names_the_runs_numbers(package, run):
    card = _member(package, "README.md").decode()
    rundir = RunDir(run)
    summary = rundir.read_summary("test")
    curve = rundir.read_threshold_curve()
    low, high = summary["dice_ci95"]
    assert f"Dice: {summary['dice']:.4f} [{low:.4f}, {high:.4f}]" in card
    assert f"IoU: {summary['iou']:.4f}" in card
    assert f"mean Dice {curve['best_dice']:.4f} at threshold {curve['best_threshold']:g}" in card
    assert f"probability >= {curve['best_threshold']:g}" in card
    assert "2 validation" in card and "epochs: 2" in card and "Test Author" in card


def test_fit_size_crops_the_centre_and_mirrors_short_sides():
    img = np.arange(5 * 3, dtype=np.float32).reshape(5, 3, 1)
    out = fit_size(img, (3, 4))
    assert out.shape == (3, 4, 1)
    assert np.array_equal(out[:, :3, 0], img[1:4, :, 0])
    assert np.array_equal(out[:, 3, 0], img[1:4, 2, 0])


def test_a_bad_cite_entry_says_how_to_write_it(offline):
    with pytest.raises(ConfigError, match="TEXT\\|DOI"):
        cite_entry("no separator")


def test_a_missing_extra_names_the_install_command(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "bioimageio.spec", None)  # import now raises ImportError
    with pytest.raises(MissingExtraError, match="celltune\\[bioimageio\\]"):
        require_bioimageio()
    monkeypatch.setattr(sys, "argv", ["celltune", "export", str(tmp_path), "--format",
                                      "bioimageio", "--out", str(tmp_path / "m.zip")])
    monkeypatch.setenv("COLUMNS", "1000")
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code != 0
    assert INSTALL in capsys.readouterr().err
    assert not (tmp_path / "m.zip").exists()
