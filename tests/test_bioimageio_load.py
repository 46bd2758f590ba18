"""A package celltune exported loads back as a Predictor that predicts as its run does."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import yaml

from celltune.data.samples import Sample, Splits
from celltune.data.synthetic import generate_image, write_dataset
from celltune.errors import RunError
from celltune.inference.predict import Predictor
from celltune.integrations.bioimageio_load import is_package, predictor_from_package
from celltune.rundir import RunDir
from tiny_runs import make_run


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny untrained run (threshold 0.4, tuned-looking instance step) and its package."""
    pytest.importorskip("bioimageio.spec", reason="export needs the extra celltune[bioimageio]")
    from celltune.integrations.bioimageio import export_bioimageio

    root = tmp_path_factory.mktemp("pkg")
    run = RunDir(make_run(root, threshold=0.4))
    write_dataset(root / "data", n=2, size=64, seed=1, png_fraction=0.0)
    images = sorted((root / "data" / "images").iterdir())
    run.write_splits(Splits(train=[Sample(images[0])], val=[Sample(images[1])]))
    best = {"method": "watershed", "h": 3.0, "min_size": 5, "min_fraction": 0.1}
    run.postprocess_path.write_text(json.dumps({"best": best}))
    return run, export_bioimageio(run.path, root / "model.zip").path


def test_the_package_predicts_what_its_run_predicts(exported):
    run, package = exported
    assert is_package(package)
    from_package = predictor_from_package(package, tile=64, device="cpu")
    from_run = Predictor.from_run(run, tile=64, device="cpu")
    assert from_package.threshold == pytest.approx(0.4)
    assert from_package.instance_params() == {
        "method": "watershed", "h": 3.0, "min_size": 5, "min_fraction": 0.1}
    image, _ = generate_image(2, 100, "fluorescence")
    got, want = from_package.predict(image), from_run.predict(image)
    assert np.allclose(got.probability, want.probability, atol=1e-6)
    assert np.array_equal(from_package.label(got.mask), from_run.label(want.mask))
    assert from_package.source == {"package": str(package)}


def test_an_unpacked_package_folder_loads_too(exported, tmp_path):
    _, package = exported
    with zipfile.ZipFile(package) as archive:
        archive.extractall(tmp_path)
    assert is_package(tmp_path)
    assert predictor_from_package(tmp_path).threshold == pytest.approx(0.4)


def test_other_files_are_refused_with_a_reason(tmp_path):
    with pytest.raises(RunError, match="not found"):
        predictor_from_package(tmp_path / "missing.zip")
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(RunError, match="not a readable model package"):
        predictor_from_package(bad)
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("rdf.yaml", yaml.safe_dump({"weights": {"onnx": {}}}))
    with pytest.raises(RunError, match="not a celltune package"):
        predictor_from_package(other)
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("README.md", "hello")
    with pytest.raises(RunError, match=r"holds no rdf\.yaml"):
        predictor_from_package(other)
    assert not is_package(tmp_path / "missing.zip") and not is_package(tmp_path)
