"""Export to ONNX and TorchScript: outputs match PyTorch at several sizes, metadata is complete."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import tiny_runs
from celltune.cli import app
from celltune.errors import ConfigError, RunError
from celltune.inference.export import ExportError, export_model, export_run, parse_size
from celltune.inference.predict import Predictor
from celltune.io import normalize
from celltune.models import create_model

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")

MEAN, STD = 0.449, 0.226  # ImageNet statistics averaged for one channel


def make_run(
    root: Path, *, name: str = "unet", head: str = "binary", threshold: float = 0.37
) -> Path:
    """A tiny run folder whose network carries ImageNet-style input normalisation."""
    return tiny_runs.make_run(root, name=name, head=head, threshold=threshold, mean=MEAN, std=STD)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def torch_model(run: Path) -> torch.nn.Module:
    model = Predictor.from_run(run, device="cpu").model
    return model.to(memory_format=torch.contiguous_format)


def reference(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.sigmoid(model(torch.from_numpy(x))).numpy()


def random_input(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def test_onnx_matches_pytorch_at_several_sizes(run: Path, torch_model, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    result = export_run(run, format="onnx", out=tmp_path / "net.onnx")
    assert result.dynamic and set(result.checked) == {"64x64", "96x128", "128x32"}
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    for i, shape in enumerate([(2, 1, 64, 64), (1, 1, 96, 128), (3, 1, 32, 160)]):
        x = random_input(shape, seed=i)
        [got] = session.run(None, {"image": x})
        assert got.shape == shape
        assert np.abs(got - reference(torch_model, x)).max() < 1e-4


def test_exported_graph_contains_the_input_normalisation(
    run: Path, torch_model, tmp_path: Path
) -> None:
    ort = pytest.importorskip("onnxruntime")
    path = export_run(run, format="onnx", out=tmp_path / "net.onnx").path
    x = random_input((1, 1, 64, 64), seed=5)
    [got] = ort.InferenceSession(str(path)).run(None, {"image": x})
    # Without the mean/std step the same network gives clearly different output.
    bare = create_model("unet", in_channels=1, tiny=True)
    bare.load_state_dict(
        {**torch_model.state_dict(), "mean": torch.zeros(1, 1, 1, 1), "std": torch.ones(1, 1, 1, 1)}
    )
    assert np.abs(got - reference(bare.eval(), x)).max() > 1e-3
    assert np.abs(got - reference(torch_model, x)).max() < 1e-4


def test_metadata_says_what_the_input_needs(run: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    tuned = {"method": "watershed", "h": 4.0, "min_size": 9, "min_fraction": 0.1}
    (run / "postprocess.json").write_text(json.dumps({"best": tuned}))
    try:
        result = export_run(run, format="onnx", out=tmp_path / "deploy" / "cells.onnx")
    finally:
        (run / "postprocess.json").unlink()
    assert result.metadata_path == tmp_path / "deploy" / "cells.json"
    meta = json.loads(result.metadata_path.read_text())
    defaults = inspect.signature(normalize).parameters
    assert meta["normalization"]["low"] == defaults["low"].default == 1.0
    assert meta["normalization"]["high"] == defaults["high"].default == 99.8
    assert meta["threshold"] == pytest.approx(0.37)
    assert meta["instances"] == tuned  # the run's tuned instance step travels along
    assert (meta["head"], meta["model"], meta["file"]) == ("binary", "unet", "cells.onnx")
    assert meta["input"]["channels"] == 1 and meta["input"]["size_divisor"] == 32
    assert meta["input"]["dynamic_axes"] == ["batch", "height", "width"]
    assert meta["embedded_normalization"]["mean"] == pytest.approx([MEAN])
    assert meta["embedded_normalization"]["std"] == pytest.approx([STD])
    assert meta["output"]["kind"] == "probability"
    assert max(meta["verified"]["max_abs_diff"].values()) < 1e-4
    onnx = pytest.importorskip("onnx")
    props = {p.key: p.value for p in onnx.load(str(result.path)).metadata_props}
    embedded = json.loads(props["celltune.json"])
    assert embedded["threshold"] == meta["threshold"]
    assert embedded["normalization"] == meta["normalization"]


def test_metadata_alone_reproduces_the_predicted_mask(run: Path, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    result = export_run(run, format="onnx", out=tmp_path / "net.onnx")
    meta = json.loads(result.metadata_path.read_text())
    raw = np.random.default_rng(7).integers(300, 4000, (64, 64)).astype(np.uint16)
    norm = meta["normalization"]
    x = normalize(raw.astype(np.float32), norm["low"], norm["high"])[None, None]
    [prob] = ort.InferenceSession(str(result.path)).run(None, {"image": x})
    expected = Predictor.from_run(run, device="cpu", tile=64).predict(raw)
    np.testing.assert_allclose(prob[0, 0], expected.probability, atol=1e-4)
    assert ((prob[0, 0] >= meta["threshold"]) != expected.mask).mean() < 1e-3


def test_torchscript_matches_pytorch(run: Path, torch_model, tmp_path: Path) -> None:
    result = export_run(run, format="torchscript", out=tmp_path / "net.pt")
    loaded = torch.jit.load(str(result.path))
    for i, shape in enumerate([(2, 1, 64, 64), (1, 1, 96, 128)]):
        x = random_input(shape, seed=10 + i)
        with torch.no_grad():
            got = loaded(torch.from_numpy(x)).numpy()
        assert np.abs(got - reference(torch_model, x)).max() < 1e-4
    assert json.loads((tmp_path / "net.json").read_text())["format"] == "torchscript"
    extra = {"celltune.json": ""}
    torch.jit.load(str(result.path), _extra_files=extra)
    assert json.loads(extra["celltune.json"])["threshold"] == pytest.approx(0.37)


def test_logits_export_of_a_two_class_head(tmp_path: Path) -> None:
    model = create_model("unet", in_channels=1, head="two_class", tiny=True).eval()
    result = export_model(model, tmp_path / "net.pt", format="torchscript", logits=True)
    x = torch.rand(1, 1, 64, 96)
    with torch.no_grad():
        np.testing.assert_allclose(torch.jit.load(str(result.path))(x), model(x), atol=1e-4)
    meta = json.loads(result.metadata_path.read_text())
    assert meta["output"]["kind"] == "logits" and meta["output"]["channels"] == 2


def test_model_that_bakes_its_shapes_fails_clearly_then_exports_at_a_fixed_size(
    tmp_path: Path,
) -> None:
    # Swin-Unet computes window shifts and masks from the input size in Python, so a trace
    # is only valid at the traced size.
    model = create_model("swin_unet", in_channels=1, tiny=True).eval()
    with pytest.raises(ExportError, match=r"swin_unet.*fixed --size"):
        export_model(model, tmp_path / "swin.pt", format="torchscript")
    assert not (tmp_path / "swin.pt").exists()
    fixed = export_model(model, tmp_path / "swin.pt", format="torchscript", size=(96, 128))
    assert list(fixed.checked) == ["96x128"] and fixed.max_abs_diff < 1e-4


def test_onnx_exporter_failure_is_one_clear_error(tmp_path: Path) -> None:
    # PSPNet's adaptive pooling has no ONNX form for a variable input size.
    model = create_model("pspnet", in_channels=1, tiny=True).eval()
    with pytest.raises(ExportError, match="pspnet cannot be exported to onnx with dynamic"):
        export_model(model, tmp_path / "psp.onnx", format="onnx")


def test_existing_export_is_not_overwritten(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "net.pt"
    export_run(run, format="torchscript", out=out)
    with pytest.raises(RunError, match="--overwrite"):
        export_run(run, format="torchscript", out=out)
    export_run(run, format="torchscript", out=out, overwrite=True)


def test_bad_options(run: Path) -> None:
    with pytest.raises(ConfigError, match="onnx, torchscript"):
        export_run(run, format="tflite")
    with pytest.raises(ConfigError, match="multiple of 32"):
        export_run(run, format="torchscript", size=(100, 64))
    assert parse_size("512x256") == (512, 256)
    with pytest.raises(ConfigError, match="HxW"):
        parse_size("big")


def test_cli_export(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli" / "model.pt"
    res = CliRunner().invoke(
        app, ["export", str(run), "--format", "torchscript", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert out.exists() and out.with_suffix(".json").exists()
    assert "max abs diff" in res.output
