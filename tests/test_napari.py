"""The napari plugin: the manifest validates, the widget predicts a layer in a worker thread
and adds its cells, the reader opens a run folder, the samples come from the generator.

The Qt-free parts (reader, samples, layer data) run everywhere. The manifest and viewer tests
need the extra ``celltune[napari]``, a Qt backend and pytest-qt (all in ``.[dev]``); without
them they skip and say which is missing. Qt runs headless (conftest sets
``QT_QPA_PLATFORM=offscreen`` unless set): the widget works on napari's ``ViewerModel``;
the full window's canvas needs OpenGL, which Qt's offscreen platform lacks, so the one
canvas test runs only under a virtual X server (``xvfb-run -a python -m pytest ...``
with ``QT_QPA_PLATFORM=xcb``) and skips otherwise.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from celltune.data.samples import Sample, Splits
from celltune.data.synthetic import generate_image, write_dataset
from celltune.errors import RunError
from celltune.inference.predict import Predictor
from celltune.integrations.napari import layers as napari_layers
from celltune.integrations.napari.reader import get_reader, read_run
from celltune.integrations.napari.sample import fluorescence, phase_contrast
from celltune.io import read_image
from celltune.rundir import RunDir
from tiny_runs import make_run

MANIFEST = (Path(__file__).resolve().parents[1] / "src" / "celltune" / "integrations"
            / "napari" / "napari.yaml")
NEEDS = 'the napari plugin needs pip install "celltune[napari]" pyqt5 pytest-qt'


def _require_napari_and_qt() -> None:
    pytest.importorskip("napari", reason=NEEDS)
    pytest.importorskip("npe2", reason=NEEDS)
    pytest.importorskip("pytestqt", reason=NEEDS)
    try:
        import qtpy.QtWidgets  # noqa: F401
    except Exception as exc:  # qtpy raises its own error type when no binding is installed
        pytest.skip(f"no Qt backend ({exc}); {NEEDS}")


def _has_opengl() -> bool:
    """Whether Qt can make an OpenGL context (napari's canvas needs one; Qt's offscreen
    platform has none, a virtual X server such as Xvfb has Mesa's)."""
    from qtpy.QtGui import QOpenGLContext

    return QOpenGLContext().create()


@pytest.fixture
def plugin(request):
    """napari's plugin manager with only this plugin, registered from its manifest."""
    _require_napari_and_qt()
    npe2pm = request.getfixturevalue("npe2pm")
    with npe2pm.tmp_plugin(manifest=str(MANIFEST)):
        yield npe2pm


@pytest.fixture
def model_viewer(plugin, qtbot):
    """A viewer without a canvas (napari's ViewerModel: layers, open, samples); Qt widgets
    work on it headless, with no OpenGL."""
    from napari.components import ViewerModel

    return ViewerModel()


@pytest.fixture
def widget(model_viewer, qtbot):
    from celltune.integrations.napari.widget import PredictWidget

    widget = PredictWidget(model_viewer)
    qtbot.addWidget(widget)
    yield widget
    if widget.worker is not None:  # never leave a thread running into the next test
        qtbot.waitUntil(widget.predict_button.isEnabled, timeout=120_000)


@pytest.fixture
def viewer(plugin, request):
    """The full napari window with its canvas (needs OpenGL: skips under Qt offscreen)."""
    make_napari_viewer = request.getfixturevalue("make_napari_viewer")
    return make_napari_viewer()


@pytest.fixture
def run_with_images(tmp_path):
    """A tiny run whose test split holds two synthetic images; only the first has a mask
    saved by evaluation, so the reader predicts the second."""
    run = RunDir(make_run(tmp_path))
    data = tmp_path / "data"
    write_dataset(data, n=2, size=64, seed=3, png_fraction=0.0)
    images = sorted((data / "images").iterdir())
    samples = [Sample(p, data / "labels" / f"{p.stem}_label.tiff") for p in images]
    run.write_splits(Splits(test=samples))
    first = read_image(samples[0].image)
    run.write_mask("test", samples[0].name, first[..., 0] > np.median(first))
    return run, samples


# --- Qt-free: reader, samples, layer data ------------------------------------------------
def test_importing_the_plugin_modules_imports_neither_napari_nor_qt():
    code = ("import sys, celltune, celltune.integrations.napari, "
            "celltune.integrations.napari.reader, celltune.integrations.napari.sample; "
            "bad = [m for m in ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', "
            "'magicgui') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_reader_takes_run_folders_only(run_with_images, tmp_path):
    run, _ = run_with_images
    assert get_reader(str(run.path)) is read_run
    assert get_reader([str(run.path)]) is read_run
    assert get_reader(str(tmp_path / "data")) is None  # a dataset, not a run
    assert get_reader(str(run.config_path)) is None  # a file
    assert get_reader([str(run.path), str(run.path)]) is None


def test_the_reader_opens_test_images_with_saved_masks_or_predictions(run_with_images):
    run, (first, second) = run_with_images
    layers = {kwargs["name"]: (data, kwargs, kind) for data, kwargs, kind in read_run(run.path)}
    assert list(layers) == [
        first.name, f"{first.name} mask", f"{first.name} truth",
        second.name, f"{second.name} probability", f"{second.name} cells",
        f"{second.name} truth",
    ]
    image = read_image(first.image)[..., 0]
    data, kwargs, kind = layers[first.name]
    assert kind == "image" and np.array_equal(data, image) and kwargs["visible"]
    saved = run.read_mask("test", first.name, image.shape)
    data, kwargs, kind = layers[f"{first.name} mask"]
    assert kind == "labels" and np.array_equal(data.astype(bool), saved) and kwargs["visible"]
    # The second image has no saved mask: the run predicts it, and it starts hidden.
    raw = read_image(second.image)
    predictor = Predictor.from_run(run)
    prediction = predictor.predict(raw)
    data, kwargs, kind = layers[f"{second.name} cells"]
    assert kind == "labels" and not kwargs["visible"]
    assert np.array_equal(data, predictor.label(prediction.mask, prediction.classes))
    assert np.allclose(layers[f"{second.name} probability"][0], prediction.probability)
    truth, kwargs, _ = layers[f"{second.name} truth"]
    assert truth.shape == raw.shape[:2] and truth.max() > 0 and not kwargs["visible"]


def test_the_reader_skips_unreadable_images_and_says_when_none_is_left(run_with_images):
    run, samples = run_with_images
    missing = Sample(samples[0].image.with_name("gone.tif"))
    run.write_splits(Splits(test=[missing, samples[1]]))
    with pytest.warns(UserWarning, match="gone.tif"):
        names = [kwargs["name"] for _, kwargs, _ in read_run(run.path)]
    assert names[0] == samples[1].name
    run.write_splits(Splits(test=[missing]))
    with pytest.warns(UserWarning), pytest.raises(RunError, match="none of its test images"):
        read_run(run.path)
    run.write_splits(Splits())
    with pytest.raises(RunError, match="test split is empty"):
        read_run(run.path)


def test_samples_are_an_image_and_its_labels():
    for sample in (fluorescence, phase_contrast):
        (image, image_kwargs, image_kind), (labels, label_kwargs, label_kind) = sample()
        assert (image_kind, label_kind) == ("image", "labels")
        assert image.shape == labels.shape == (256, 256)
        assert labels.max() > 0 and label_kwargs["name"] == f"{image_kwargs['name']} labels"
    again = fluorescence()
    assert np.array_equal(again[0][0], fluorescence()[0][0])  # a fixed seed


def test_layer_data_for_prediction_accepts_one_plane_only():
    gray = np.zeros((5, 6), np.uint16)
    assert napari_layers.image_for_prediction(gray[None], rgb=False).shape == (5, 6)
    rgba = np.zeros((5, 6, 4), np.uint8)
    assert napari_layers.image_for_prediction(rgba, rgb=True).shape == (5, 6, 3)
    with pytest.raises(Exception, match="2-D image"):
        napari_layers.image_for_prediction(np.zeros((3, 5, 6)), rgb=False)


def test_load_predictor_names_what_it_expects(tmp_path):
    with pytest.raises(RunError, match="neither a celltune run folder"):
        napari_layers.load_predictor(tmp_path)
    predictor = napari_layers.load_predictor(make_run(tmp_path), tile=96, tta=True)
    assert (predictor.tile, predictor.tta) == (96, True)


# --- manifest (npe2) ---------------------------------------------------------------------
def test_the_manifest_validates_and_its_commands_import():
    _require_napari_and_qt()
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(MANIFEST)
    manifest.validate_imports()
    assert manifest.name == "celltune"
    assert [w.display_name for w in manifest.contributions.widgets] == ["Predict cells"]
    assert manifest.contributions.readers[0].accepts_directories
    assert {s.key for s in manifest.contributions.sample_data} == {"fluorescence",
                                                                    "phase_contrast"}


def test_npe2_validate_finds_the_installed_entry_point():
    _require_napari_and_qt()
    from importlib.metadata import entry_points

    if not any(ep.value.endswith("napari.yaml") for ep in
               entry_points(group="napari.manifest", name="celltune")):
        pytest.skip("celltune is installed without its napari.manifest entry point")
    npe2 = Path(sys.executable).with_name("npe2")
    command = [str(npe2)] if npe2.exists() else [sys.executable, "-m", "npe2"]
    result = subprocess.run([*command, "validate", "celltune"], capture_output=True, text=True)
    assert result.returncode == 0 and "valid" in result.stdout, result.stdout + result.stderr


# --- widget (headless Qt, no canvas) --------------------------------------------------
def _predict(widget, qtbot, layer_name: str) -> None:
    widget.predict_button.click()
    qtbot.waitUntil(lambda: f"{layer_name} cells" in widget.viewer.layers, timeout=120_000)
    qtbot.waitUntil(widget.predict_button.isEnabled, timeout=120_000)


def test_the_widget_predicts_the_layer_and_adds_probability_and_cells(widget, qtbot, tmp_path):
    from napari.layers import Image, Labels

    viewer = widget.viewer
    run = make_run(tmp_path)
    image, _ = generate_image(3, 150, "fluorescence")
    viewer.add_image(np.zeros((8, 8), np.float32), name="other")
    viewer.add_image(image, name="cells", scale=(0.5, 0.5))
    assert [widget.layer.itemText(i) for i in range(widget.layer.count())] == ["other", "cells"]
    widget.layer.setCurrentText("cells")
    widget.source.setText(str(run))
    widget.tile.setValue(64)
    steps: list[int] = []
    widget.progress.valueChanged.connect(steps.append)

    _predict(widget, qtbot, "cells")

    predictor = Predictor.from_run(run, tile=64)
    expected = predictor.predict(image)
    cells, probability = viewer.layers["cells cells"], viewer.layers["cells probability"]
    assert isinstance(cells, Labels) and isinstance(probability, Image)
    assert cells.data.shape == image.shape and np.array_equal(cells.scale, (0.5, 0.5))
    assert np.array_equal(cells.data, predictor.label(expected.mask, expected.classes))
    assert np.allclose(probability.data, expected.probability)
    # The bar counted the tiles as predict reported them (batches of 2), up to the total.
    tiles = predictor.tile_count(*image.shape)
    assert tiles > 2 and widget.progress.maximum() == tiles
    assert steps[-1] == tiles and steps == sorted(steps) and len(set(steps)) > 2
    assert widget.status.text().startswith("cells: ")
    assert [layer.name for layer in viewer.layers] == [
        "other", "cells", "cells probability", "cells cells"]


def test_predicting_again_updates_the_layers_and_tta_is_passed_on(widget, qtbot, tmp_path):
    viewer = widget.viewer
    run = make_run(tmp_path)
    image, _ = generate_image(4, 64, "phase_contrast")
    viewer.add_image(image, name="img")
    widget.source.setText(str(run))
    for tta in (False, True):
        widget.tta.setChecked(tta)
        _predict(widget, qtbot, "img")
    assert [layer.name for layer in viewer.layers] == ["img", "img probability", "img cells"]
    expected = Predictor.from_run(run, tta=True).predict(image)
    assert np.allclose(viewer.layers["img probability"].data, expected.probability)


def test_the_widget_says_what_is_wrong_without_adding_layers(widget, qtbot, tmp_path):
    viewer = widget.viewer
    widget.predict_button.click()
    assert "image layer" in widget.status.text()
    viewer.add_image(np.zeros((3, 16, 16), np.float32), name="stack")
    widget.source.setText(str(tmp_path))
    widget.predict_button.click()
    assert "2-D image" in widget.status.text()
    viewer.add_image(np.zeros((16, 16), np.float32), name="plane")
    widget.layer.setCurrentText("plane")
    widget.predict_button.click()
    qtbot.waitUntil(lambda: "neither a celltune run folder" in widget.status.text(),
                    timeout=30_000)
    qtbot.waitUntil(widget.predict_button.isEnabled, timeout=10_000)
    assert [layer.name for layer in viewer.layers] == ["stack", "plane"]


# --- through napari's plugin system ------------------------------------------------------
def test_napari_opens_a_run_folder_and_the_samples_through_the_plugin(
    model_viewer, run_with_images
):
    run, (first, second) = run_with_images
    model_viewer.open(str(run.path), plugin="celltune")
    names = [layer.name for layer in model_viewer.layers]
    assert names[:3] == [first.name, f"{first.name} mask", f"{first.name} truth"]
    assert f"{second.name} cells" in names
    model_viewer.layers.clear()
    model_viewer.open_sample("celltune", "fluorescence")
    image, labels = model_viewer.layers
    assert image.data.shape == labels.data.shape == (256, 256)


def test_the_window_docks_the_widget_from_the_plugin(viewer):
    from celltune.integrations.napari.widget import PredictWidget

    _, widget = viewer.window.add_plugin_dock_widget("celltune", "Predict cells")
    assert isinstance(widget, PredictWidget) and widget.layer.count() == 0


def test_the_widget_predicts_a_layer_on_the_canvas(viewer, qtbot, tmp_path):
    """The same prediction in the full window, canvas drawn (needs OpenGL: Xvfb)."""
    if not _has_opengl():
        pytest.skip("no OpenGL context here (Qt offscreen); run under xvfb-run for the canvas")
    run = make_run(tmp_path)
    image, _ = generate_image(5, 96, "fluorescence")
    viewer.add_image(image, name="canvas")
    _, widget = viewer.window.add_plugin_dock_widget("celltune", "Predict cells")
    widget.source.setText(str(run))
    _predict(widget, qtbot, "canvas")
    predictor = Predictor.from_run(run)
    expected = predictor.predict(image)
    labels = viewer.layers["canvas cells"].data
    assert np.array_equal(labels, predictor.label(expected.mask, expected.classes))
    assert viewer.screenshot(canvas_only=True).ndim == 3


def test_inside_napari_torch_is_imported_with_triton_hidden():
    """Triton loaded under a live Mesa OpenGL context segfaults (seen with napari's canvas
    under Xvfb); the plugin imports torch with Triton hidden when napari came first."""
    _require_napari_and_qt()
    code = ("import sys, napari, celltune.integrations.napari.layers; "
            "from torch.utils._triton import has_triton_package; "
            "print(has_triton_package(), 'triton' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-2:] == ["False", "False"]
