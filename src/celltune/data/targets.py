"""Training targets derived from instance label maps.

An instance map holds 0 for background and one positive id per cell. Models see one of:

* ``binary``: float32 ``(1, H, W)`` with 1.0 on cells, for a single-logit sigmoid head;
* ``two_class``: int64 ``(H, W)`` with 0 background / 1 cell, for a 2-channel softmax head;
* ``three_class``: int64 ``(H, W)`` with 0 background / 1 interior / 2 boundary, where a
  boundary pixel is a cell pixel whose 4-neighbour belongs to the background or to another
  cell, so touching cells are separated by boundaries on both sides of their contact.

Pixels on the image border are not boundaries merely because the image ends there: a crop
cuts cells, and marking the cut as a boundary would teach the model a contour that is not in
the image.

Example:
    >>> import numpy as np
    >>> labels = np.array([[0, 1, 1, 1], [0, 1, 1, 1], [0, 1, 1, 1]])
    >>> three_class_target(labels).tolist()
    [[0, 2, 1, 1], [0, 2, 1, 1], [0, 2, 1, 1]]
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from celltune.registry import Registry

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2

TARGETS: Registry[Callable[[np.ndarray], np.ndarray]] = Registry("training target")


def _check_labels(labels: np.ndarray) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D instance map, got shape {arr.shape}")
    return arr


@TARGETS.register("binary", classes=1)
def binary_target(labels: np.ndarray) -> np.ndarray:
    """Foreground as float32 ``(1, H, W)`` with values 0.0 and 1.0."""
    arr = _check_labels(labels)
    return (arr > 0).astype(np.float32)[None]


@TARGETS.register("two_class", classes=2)
def two_class_target(labels: np.ndarray) -> np.ndarray:
    """Class indices as int64 ``(H, W)``: 0 background, 1 cell."""
    arr = _check_labels(labels)
    return (arr > 0).astype(np.int64)


def boundary_mask(labels: np.ndarray) -> np.ndarray:
    """Boolean ``(H, W)``: cell pixels with a 4-neighbour of a different id (or background).

    The image border counts as "same id" (edge replication), so cut cells get no contour there.
    """
    arr = _check_labels(labels)
    padded = np.pad(arr, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    differs = (
        (padded[:-2, 1:-1] != centre)
        | (padded[2:, 1:-1] != centre)
        | (padded[1:-1, :-2] != centre)
        | (padded[1:-1, 2:] != centre)
    )
    return differs & (arr > 0)


@TARGETS.register("three_class", classes=3)
def three_class_target(labels: np.ndarray) -> np.ndarray:
    """Class indices as int64 ``(H, W)``: 0 background, 1 interior, 2 boundary."""
    arr = _check_labels(labels)
    out = (arr > 0).astype(np.int64)
    out[boundary_mask(arr)] = BOUNDARY
    return out


def make_target(labels: np.ndarray, kind: str) -> torch.Tensor:
    """Build the ``kind`` target from an instance map as a torch tensor.

    Raises:
        ConfigError: ``kind`` is not a registered target; the message lists the valid ones.
    """
    return torch.from_numpy(np.ascontiguousarray(TARGETS.get(kind)(labels)))


def num_classes(kind: str) -> int:
    """Output channels a model head needs for target ``kind`` (1 for binary)."""
    return int(TARGETS.info(kind)["classes"])
