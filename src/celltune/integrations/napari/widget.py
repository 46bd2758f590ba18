"""The "Predict cells" dock widget: a run or package, an image layer, tiling, TTA, Predict.

Prediction runs in a napari worker thread, so the viewer stays responsive; the progress bar
counts the tiles as :meth:`Predictor.predict` reports them. When it ends, the widget adds (or
updates) ``<layer> probability`` and ``<layer> cells`` beside the image, with its scale and
translation.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import napari
import numpy as np
from napari.layers import Image, Labels
from napari.qt.threading import thread_worker
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from celltune.errors import CelltuneError, RunError
from celltune.inference.predict import Predictor
from celltune.integrations.napari.layers import (
    image_for_prediction,
    load_predictor,
    predict_image,
    prediction_layers,
)
from celltune.rundir import RunDir

LAYER_TYPES = {"image": Image, "labels": Labels}
#: The tile spin box's lowest value, shown as "from the model": keep the source's tile size.
SOURCE_TILE = 0


class _Progress(QObject):
    """Signals the worker thread emits; Qt delivers them in the widget's (main) thread."""

    total = Signal(int)
    advanced = Signal(int)


@thread_worker
def _predict_worker(
    load: Any, image: np.ndarray, progress: _Progress
) -> tuple[np.ndarray, np.ndarray] | CelltuneError:
    # A user's mistake (not a run folder, a bad package) comes back as a value: napari reports
    # a raised exception as a crash with a traceback, which only a bug deserves.
    try:
        predictor = load()
        progress.total.emit(predictor.tile_count(*image.shape[:2]))
        return predict_image(predictor, image, on_tile=progress.advanced.emit)
    except CelltuneError as exc:
        return exc


class PredictWidget(QWidget):
    """Predict the chosen image layer with a celltune run folder or exported package."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.worker: Any = None
        self._loaded: dict[tuple[str, float], Predictor] = {}
        self._lock = threading.Lock()
        self._progress = _Progress(self)
        self._build()
        self._connect()
        self.refresh_layers()

    # --- layout ------------------------------------------------------------------------
    def _build(self) -> None:
        self.source = QLineEdit()
        self.source.setPlaceholderText("run folder or exported package (.zip)")
        self.run_button = QPushButton("Run folder…")
        self.package_button = QPushButton("Package…")
        self.layer = QComboBox()
        self.tile = QSpinBox()
        self.tile.setRange(SOURCE_TILE, 8192)
        self.tile.setSingleStep(64)
        self.tile.setSpecialValueText("from the model")
        self.tile.setSuffix(" px")
        self.tta = QCheckBox("flip test-time augmentation (4× slower)")
        self.predict_button = QPushButton("Predict")
        self.progress = QProgressBar()
        self.status = QLabel("")
        self.status.setWordWrap(True)

        pickers = QHBoxLayout()
        pickers.addWidget(self.run_button)
        pickers.addWidget(self.package_button)
        form = QFormLayout()
        form.addRow("model", self.source)
        form.addRow("", pickers)
        form.addRow("image", self.layer)
        form.addRow("tile", self.tile)
        form.addRow("", self.tta)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        for widget in (self.predict_button, self.progress, self.status):
            layout.addWidget(widget)
        layout.addStretch()

    def _connect(self) -> None:
        self.run_button.clicked.connect(self._choose_run)
        self.package_button.clicked.connect(self._choose_package)
        self.predict_button.clicked.connect(self.predict)
        self._progress.total.connect(self._start_progress)
        self._progress.advanced.connect(lambda n: self.progress.setValue(self.progress.value() + n))
        for event in ("inserted", "removed", "moved"):
            getattr(self.viewer.layers.events, event).connect(self.refresh_layers)

    def _choose_run(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "celltune run folder")
        if folder:
            self.source.setText(folder)

    def _choose_package(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "bioimage.io package exported by celltune", filter="Model package (*.zip)"
        )
        if path:
            self.source.setText(path)

    def refresh_layers(self, *_: Any) -> None:
        """List the viewer's image layers, keeping the current choice when it is still there."""
        current = self.layer.currentText()
        names = [layer.name for layer in self.viewer.layers if isinstance(layer, Image)]
        self.layer.clear()
        self.layer.addItems(names)
        if current in names:
            self.layer.setCurrentText(current)

    # --- prediction --------------------------------------------------------------------
    def predict(self) -> None:
        """Start predicting the chosen layer in a worker thread; results arrive as layers."""
        try:
            layer = self._chosen_layer()
            data = layer.data[0] if layer.multiscale else layer.data
            image = image_for_prediction(data, layer.rgb)
            source = self._source_path()
        except CelltuneError as exc:
            self.status.setText(str(exc))
            return
        tile = None if self.tile.value() == SOURCE_TILE else self.tile.value()
        tta = self.tta.isChecked()
        self.predict_button.setEnabled(False)
        self.progress.setRange(0, 0)  # busy until the model is loaded and the tiles counted
        self.status.setText(f"Predicting {layer.name}…")
        worker = _predict_worker(
            lambda: self._predictor(source, tile, tta), image, self._progress, _ignore_errors=True
        )
        worker.returned.connect(lambda result: self._show(layer, result))
        worker.errored.connect(self._failed)
        worker.finished.connect(lambda: self.predict_button.setEnabled(True))
        self.worker = worker
        worker.start()

    def _chosen_layer(self) -> Image:
        name = self.layer.currentText()
        if not name or name not in self.viewer.layers:
            raise RunError("Add or choose an image layer to predict.")
        return self.viewer.layers[name]

    def _source_path(self) -> Path:
        text = self.source.text().strip()
        if not text:
            raise RunError("Choose a run folder or an exported package first.")
        return Path(text).expanduser()

    def _predictor(self, source: Path, tile: int | None, tta: bool) -> Predictor:
        """The source's predictor (loaded once per path and modification time) with the
        widget's tile size and TTA; runs in the worker thread."""
        run = RunDir(source)
        weights = run.checkpoint() if run.is_run() else source
        key = (str(source.resolve()), os.path.getmtime(weights) if weights.exists() else 0.0)
        with self._lock:
            if key not in self._loaded:
                self._loaded = {key: load_predictor(source)}
            return self._loaded[key].with_options(tile=tile, tta=tta)

    def _start_progress(self, total: int) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(0)

    def _show(self, layer: Image, result: tuple[np.ndarray, np.ndarray] | CelltuneError) -> None:
        if isinstance(result, CelltuneError):
            self._failed(result)
            return
        probability, labels = result
        common = {"scale": layer.scale, "translate": layer.translate}
        shown = {existing.name: existing for existing in self.viewer.layers}
        for data, kwargs, kind in prediction_layers(layer.name, probability, labels, **common):
            existing = shown.get(kwargs["name"])
            if isinstance(existing, LAYER_TYPES[kind]):
                existing.data = data
            else:
                getattr(self.viewer, f"add_{kind}")(data, **kwargs)
        self.progress.setValue(self.progress.maximum())
        cells = np.unique(labels).size - int((labels == 0).any())
        self.status.setText(f"{layer.name}: {cells} cells.")

    def _failed(self, exc: BaseException) -> None:
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        if isinstance(exc, CelltuneError):
            self.status.setText(str(exc))
        else:
            self.status.setText(f"Prediction failed: {type(exc).__name__}: {exc}")
