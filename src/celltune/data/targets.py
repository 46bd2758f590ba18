"""Training targets derived from instance label maps.

An instance map holds 0 for background and one positive id per cell. Models see one of:

* ``binary``: float32 ``(1, H, W)`` with 1.0 on cells, for a single-logit sigmoid head;
* ``two_class``: int64 ``(H, W)`` with 0 background / 1 cell, for a 2-channel softmax head;
* ``three_class``: int64 ``(H, W)`` with 0 background / 1 interior / 2 boundary, where a
  boundary pixel is a cell pixel whose 4-neighbour belongs to the background or to another
  cell, so touching cells are separated by boundaries on both sides of their contact;
* ``distance``: float32 ``(2, H, W)``: the foreground (1.0 on cells) and each cell's
  Euclidean distance to its own border divided by that cell's largest distance
  (:func:`distance_map`): 1 at the cell's centre, falling to about 0 at its border, 0 on the
  background. Touching cells each keep their own peak.

Pixels on the image border are not boundaries merely because the image ends there: a crop
cuts cells, and marking the cut as a boundary would teach the model a contour that is not in
the image.

A crop cannot compute the distance map itself: a cell cut by the crop would get a false
border, and its peak would move. So a target may name a *plane* in its registry entry
(:func:`target_plane`): a float32 ``(H, W)`` array computed once from the whole label map,
cached with the image, cut and augmented together with the labels (bilinear where the labels
are warped nearest-neighbour) and handed to the target function with the cropped labels.

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
from scipy import ndimage as ndi

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


def contact_mask(labels: np.ndarray) -> np.ndarray:
    """Boolean ``(H, W)``: cell pixels with a 4-neighbour of a *different cell* (not the
    background): the two one-pixel rims where touching cells meet."""
    arr = _check_labels(labels)
    padded = np.pad(arr, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    out = np.zeros(arr.shape, dtype=bool)
    for neighbour in (padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]):
        out |= (neighbour != centre) & (neighbour > 0)
    return out & (arr > 0)


@TARGETS.register("binary_gaps", classes=1)
def binary_gaps_target(labels: np.ndarray) -> np.ndarray:
    """The binary target with touching cells pulled apart: float32 ``(1, H, W)``, 1 on cells
    except where a cell meets another one (:func:`contact_mask`, a two-pixel line), 0 there
    and on the background. A binary head trained on it learns to leave a gap between cells
    that touch, which the mask's instance step then splits (``train.gaps``).

    Example:
        >>> labels = np.array([[1, 1, 2, 2], [1, 1, 2, 2]])
        >>> binary_gaps_target(labels)[0].astype(int).tolist()
        [[1, 0, 0, 1], [1, 0, 0, 1]]
    """
    arr = _check_labels(labels)
    return ((arr > 0) & ~contact_mask(arr)).astype(np.float32)[None]


@TARGETS.register("three_class", classes=3)
def three_class_target(labels: np.ndarray) -> np.ndarray:
    """Class indices as int64 ``(H, W)``: 0 background, 1 interior, 2 boundary."""
    arr = _check_labels(labels)
    out = (arr > 0).astype(np.int64)
    out[boundary_mask(arr)] = BOUNDARY
    return out


def distance_map(labels: np.ndarray) -> np.ndarray:
    """Per cell, the distance to the cell's own border over the cell's largest distance.

    Float32 ``(H, W)``: 0 on the background; on each cell the Euclidean distance transform of
    that cell alone, computed in its bounding box grown by one pixel, so a touching
    neighbour counts as border just like the background, and divided by the cell's maximum:
    1 at its centre, ``1 / max`` on its outermost pixels. The image edge is not a border (as
    for ``three_class``): a box that reaches the edge is not grown there, so a cell cut by the
    image keeps rising towards the cut instead of tapering at it.
    """
    arr = _check_labels(labels)
    out = np.zeros(arr.shape, dtype=np.float32)
    height, width = arr.shape
    for index, box in enumerate(ndi.find_objects(np.maximum(arr, 0))):
        if box is None:
            continue
        rows, cols = box
        window = (slice(max(rows.start - 1, 0), min(rows.stop + 1, height)),
                  slice(max(cols.start - 1, 0), min(cols.stop + 1, width)))
        cell = arr[window] == index + 1
        dist = ndi.distance_transform_edt(cell) if not cell.all() else cell.astype(np.float64)
        out[window][cell] = (dist[cell] / dist[cell].max()).astype(np.float32)
    return out


@TARGETS.register("distance", classes=2, plane=distance_map)
def distance_target(labels: np.ndarray, plane: np.ndarray | None = None) -> np.ndarray:
    """Float32 ``(2, H, W)``: the foreground and the normalised distance map.

    ``plane`` is the :func:`distance_map` of the whole image, cut and augmented like
    ``labels`` (a crop's own distance map would see false borders at the crop's edges);
    without it the map is computed from ``labels``. The distance is clipped to ``[0, 1]`` and
    set to 0 off the foreground, so a bilinearly warped plane cannot leak onto the background.
    """
    arr = _check_labels(labels)
    fg = (arr > 0).astype(np.float32)
    dist = distance_map(arr) if plane is None else np.asarray(plane, dtype=np.float32)
    if dist.shape != arr.shape:
        raise ValueError(f"distance plane {dist.shape} does not match the labels {arr.shape}")
    return np.stack([fg, np.clip(dist, 0.0, 1.0) * fg])


def target_plane(kind: str) -> Callable[[np.ndarray], np.ndarray] | None:
    """The whole-image plane target ``kind`` needs beside its labels, or None (see above)."""
    return TARGETS.info(kind).get("plane")


def make_target(labels: np.ndarray, kind: str, plane: np.ndarray | None = None) -> torch.Tensor:
    """Build the ``kind`` target from an instance map (and its plane) as a torch tensor.

    ``plane`` is the target's :func:`target_plane` output, cut like ``labels``; only targets
    that name a plane accept one.

    Raises:
        ConfigError: ``kind`` is not a registered target; the message lists the valid ones.
    """
    build = TARGETS.get(kind)
    array = build(labels) if plane is None else build(labels, plane)
    return torch.from_numpy(np.ascontiguousarray(array))


def num_classes(kind: str) -> int:
    """Output channels a model head needs for target ``kind`` (1 for binary)."""
    return int(TARGETS.info(kind)["classes"])
