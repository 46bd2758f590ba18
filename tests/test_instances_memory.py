"""Instance recovery on a large image keeps its working memory to one window (tracemalloc)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from celltune.data.targets import distance_map, three_class_target
from celltune.inference.instances import (
    instances_from_classes,
    instances_from_classes_tiled,
    instances_from_distance_tiled,
    label_instances,
    label_instances_tiled,
)

SIZE, TILE, MARGIN = 1024, 256, 32
#: Bytes per window pixel the decoders may use beyond the output labels (distance
#: transforms in float64, markers, the watershed's queue); measured ~180 for the binary one.
BYTES_PER_WINDOW_PIXEL = 250


@pytest.fixture(scope="module")
def cells() -> np.ndarray:
    """A 1024² plane of 1764 discs of radius 7-11 on a 24-px grid, many of them touching."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[-12:12, -12:12]
    labels = np.zeros((SIZE, SIZE), np.int32)
    for k, (cy, cx) in enumerate(
        ((y, x) for y in range(12, SIZE - 12, 24) for x in range(12, SIZE - 12, 24)), start=1
    ):
        window = labels[cy - 12 : cy + 12, cx - 12 : cx + 12]
        window[yy**2 + xx**2 <= rng.integers(7, 12) ** 2] = k
    return labels


def _peak(fn) -> tuple[np.ndarray, int]:
    tracemalloc.start()
    try:
        out = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return out, peak


def _one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(3, dtype=np.float32)[three_class_target(labels)].transpose(2, 0, 1).copy()


@pytest.mark.parametrize("head", ["binary", "boundary", "distance"])
def test_tiled_decoding_memory_is_bounded_by_a_window(cells, head):
    if head == "binary":
        inputs = cells > 0
        tiled = lambda: label_instances_tiled(inputs, tile=TILE, margin=MARGIN)  # noqa: E731
        whole = lambda: label_instances(inputs)  # noqa: E731
    elif head == "boundary":
        inputs = _one_hot(cells)
        tiled = lambda: instances_from_classes_tiled(inputs, tile=TILE, margin=MARGIN)  # noqa: E731
        whole = lambda: instances_from_classes(inputs)  # noqa: E731
    else:
        inputs = np.stack([(cells > 0).astype(np.float32), distance_map(cells)])
        tiled = lambda: instances_from_distance_tiled(inputs, tile=TILE, margin=MARGIN)  # noqa: E731
        whole = None
    labels, peak = _peak(tiled)
    assert labels.max() == cells.max()  # every disc found, none split or lost
    window = (TILE + 2 * MARGIN) ** 2
    assert peak - labels.nbytes < BYTES_PER_WINDOW_PIXEL * window
    if whole is not None:  # the bound is one the whole-image decoding would break
        _, whole_peak = _peak(whole)
        assert whole_peak > 2 * peak
