"""The Qt-free part of the napari plugin: which model to load, what to predict, which layers.

Layer data are napari's ``(data, kwargs, layer_type)`` tuples, so the reader, the sample data
and the widget share them and tests check them without a viewer.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from celltune.errors import ConfigError, RunError
from celltune.inference.predict import Predictor
from celltune.integrations.bioimageio_load import is_package, predictor_from_package
from celltune.rundir import RunDir

#: napari's ``(data, kwargs, layer_type)``.
LayerData = tuple[Any, dict[str, Any], str]


def load_predictor(
    source: str | os.PathLike, *, tile: int | None = None, tta: bool | None = None
) -> Predictor:
    """A predictor from a run folder or a bioimage.io package celltune exported.

    ``tile`` and ``tta`` override the source's settings; ``None`` keeps them.

    Raises:
        RunError: ``source`` is neither a run folder nor a package, or cannot be loaded.
    """
    path = Path(source).expanduser()
    run = RunDir(path)
    if run.is_run():
        return Predictor.from_run(run, tile=tile, tta=tta)
    if is_package(path):
        return predictor_from_package(path, tile=tile, tta=tta)
    raise RunError(
        f"{path}: neither a celltune run folder (no {run.config_path.name}) nor an exported "
        "bioimage.io package (.zip); choose one of those."
    )


def image_for_prediction(data: Any, rgb: bool) -> np.ndarray:
    """An image layer's data as the ``(H, W)`` or ``(H, W, C)`` array celltune predicts.

    Raises:
        ConfigError: the layer is not a single 2-D plane (grayscale or RGB/RGBA).
    """
    array = np.asarray(data)
    if array.ndim == 3 and rgb:
        return array[..., :3]
    squeezed = np.squeeze(array)
    if squeezed.ndim == 2:
        return squeezed
    raise ConfigError(
        f"The layer has shape {array.shape}; celltune predicts one 2-D image (grayscale or "
        "RGB), so choose such a layer or split the stack first."
    )


def predict_image(
    predictor: Predictor, image: np.ndarray, on_tile: Callable[[int], None] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Foreground probability ``(H, W)`` float32 and instance labels ``(H, W)`` int32, with
    the predictor's threshold and instance step."""
    prediction = predictor.predict(image, on_tile=on_tile)
    return prediction.probability, predictor.label(prediction.mask, prediction.classes)


def prediction_layers(
    name: str, probability: np.ndarray, labels: np.ndarray, **common: Any
) -> list[LayerData]:
    """``<name> probability`` (an image in [0, 1]) and ``<name> cells`` (labels).

    ``common`` goes to both (``scale``, ``translate``, ``visible`` of the source image).
    """
    shown = {"colormap": "magma", "blending": "additive", "opacity": 0.5,
             "contrast_limits": (0.0, 1.0)}
    return [
        (probability, {"name": f"{name} probability", **shown, **common}, "image"),
        (labels, {"name": f"{name} cells", **common}, "labels"),
    ]


def image_layer(name: str, image: np.ndarray, **kwargs: Any) -> LayerData:
    """An ``(H, W, C)`` image as read by celltune: gray as 2-D, three channels as RGB."""
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    elif image.ndim == 3 and image.shape[-1] != 3:
        return (np.moveaxis(image, -1, 0), {"name": name, **kwargs}, "image")
    return (image, {"name": name, "rgb": image.ndim == 3, **kwargs}, "image")
