"""napari reader for celltune run folders: ``napari runs/unet`` opens the run's test images.

Each test image comes with the mask the run's evaluation saved (``<image> mask``) or, where
none was saved, the run's prediction (``<image> probability`` and ``<image> cells``), and
its ground-truth labels when the split names them (``<image> truth``, hidden). Only the
first image's layers start visible, so the images do not cover each other.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from celltune.data.samples import Sample
from celltune.errors import CelltuneError, RunError
from celltune.inference.predict import Predictor
from celltune.integrations.napari.layers import (
    LayerData,
    image_layer,
    predict_image,
    prediction_layers,
)
from celltune.io import read_image, read_label
from celltune.rundir import RunDir

SPLIT = "test"
PathLike = str | os.PathLike


def _one_path(path: PathLike | Sequence[PathLike]) -> Path | None:
    if isinstance(path, list | tuple):
        return Path(path[0]) if len(path) == 1 else None
    return Path(path)


def get_reader(path: PathLike | Sequence[PathLike]) -> Callable | None:
    """:func:`read_run` for a run folder with a ``splits.json``; None for anything else."""
    folder = _one_path(path)
    if folder is None:
        return None
    run = RunDir(folder)
    return read_run if run.is_run() and run.splits_path.is_file() else None


def read_run(path: PathLike | Sequence[PathLike]) -> list[LayerData]:
    """Layer data of a run folder's test images (see the module's description)."""
    folder = _one_path(path)
    if folder is None:
        raise RunError("Open one celltune run folder at a time.")
    return run_layers(RunDir(folder))


def run_layers(run: RunDir, split: str = SPLIT) -> list[LayerData]:
    """The images of ``split`` with saved masks, predictions and ground truth as layers.

    An image that cannot be read is skipped with a warning naming it.

    Raises:
        RunError: the split is empty or none of its images could be read.
    """
    samples = run.read_splits()[split]
    if not samples:
        raise RunError(f"{run.path}: its {split} split is empty; there is nothing to show.")
    layers: list[LayerData] = []
    predictor: list[Predictor] = []  # loaded on first need: most runs saved every mask
    for sample in samples:
        try:
            layers += _sample_layers(run, split, sample, predictor, visible=not layers)
        except CelltuneError as exc:
            warnings.warn(f"celltune: skipped {sample.image}: {exc}", stacklevel=2)
    if not layers:
        raise RunError(f"{run.path}: none of its {split} images could be read.")
    return layers


def _sample_layers(
    run: RunDir, split: str, sample: Sample, predictor: list[Predictor], visible: bool
) -> list[LayerData]:
    image = read_image(sample.image)
    shape = image.shape[:2]
    layers = [image_layer(sample.name, image, visible=visible)]
    if run.has_mask(split, sample.name):
        mask = run.read_mask(split, sample.name, shape).astype(np.uint8)
        layers.append((mask, {"name": f"{sample.name} mask", "visible": visible}, "labels"))
    else:
        if not predictor:
            predictor.append(Predictor.from_run(run))
        probability, labels = predict_image(predictor[0], image)
        layers += prediction_layers(sample.name, probability, labels, visible=visible)
    if sample.label is not None and sample.label.is_file():
        truth = read_label(sample.label, shape)
        layers.append((truth, {"name": f"{sample.name} truth", "visible": False}, "labels"))
    return layers
