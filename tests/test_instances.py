"""Binary mask -> instance labels: components, watershed splitting, size filter."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from celltune.errors import ConfigError
from celltune.inference import instances
from celltune.inference.instances import label_instances


def _disc(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def _two_touching_discs(distance: float = 18.0) -> np.ndarray:
    shape = (40, 60)
    return _disc(shape, 20, 20, 10) | _disc(shape, 20, 20 + distance, 10)


@pytest.mark.parametrize("distance", [16.0, 18.0, 19.5])
def test_touching_discs_one_component_two_watershed_cells(distance):
    mask = _two_touching_discs(distance)
    comp = label_instances(mask, method="components", min_size=0)
    assert comp.max() == 1
    ws = label_instances(mask, method="watershed", min_size=0)
    assert ws.max() == 2
    assert ws.dtype == np.int32
    # Every foreground pixel is assigned, and the split falls between the two centres.
    assert np.array_equal(ws > 0, mask)
    assert ws[20, 20] != ws[20, int(20 + distance)]
    left, right = np.bincount(ws.ravel())[1:]
    assert abs(int(left) - int(right)) <= 0.1 * mask.sum()


def test_watershed_keeps_single_convex_cells_whole():
    mask = np.zeros((40, 60), bool)
    mask |= _disc(mask.shape, 12, 12, 8)
    mask[24:34, 10:50] = True  # an elongated cell: its distance map has a flat ridge
    labels = label_instances(mask, method="watershed", min_size=0)
    assert labels.max() == 2


def test_small_specks_are_removed_and_ids_stay_consecutive():
    mask = np.zeros((30, 30), bool)
    mask[2:4, 2:4] = True  # 4 px speck
    mask[10:20, 10:20] = True  # 100 px cell
    mask[25, 25] = True  # 1 px speck
    mask[3:8, 20:25] = True  # 25 px cell
    for method in ("components", "watershed"):
        labels = label_instances(mask, method=method, min_size=10)
        assert sorted(np.unique(labels).tolist()) == [0, 1, 2], method
        assert labels[2, 2] == 0 and labels[25, 25] == 0
        assert np.bincount(labels.ravel())[1:].tolist() in ([25, 100], [100, 25])
    assert label_instances(mask, method="components", min_size=0).max() == 4


def test_diagonal_neighbours_are_one_component():
    mask = np.zeros((6, 6), bool)
    mask[1, 1] = mask[2, 2] = mask[3, 3] = True
    assert label_instances(mask, method="components", min_size=0).max() == 1


@pytest.mark.parametrize("method", ["components", "watershed"])
def test_empty_mask_gives_all_zeros(method):
    labels = label_instances(np.zeros((12, 7), bool), method=method)
    assert labels.shape == (12, 7) and labels.dtype == np.int32 and not labels.any()


def test_numeric_masks_and_bad_arguments():
    mask = np.zeros((10, 10), np.uint8)
    mask[2:6, 2:6] = 255
    assert label_instances(mask, method="components", min_size=1).max() == 1
    with pytest.raises(ConfigError, match="components, watershed"):
        label_instances(mask, method="blobs")
    with pytest.raises(ValueError, match="2-D"):
        label_instances(np.zeros((2, 3, 3)))


def test_module_examples_run():
    assert doctest.testmod(instances).failed == 0


def _random_discs(shape, n, seed, radius=(4, 12)):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, bool)
    for _ in range(n):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        r = rng.uniform(*radius)
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return mask


@pytest.mark.parametrize("method", ["components", "watershed"])
def test_tiled_labelling_finds_the_same_cells_as_whole(method):
    from celltune.evaluation.metrics import instance_scores
    from celltune.inference.instances import label_instances_tiled

    mask = _random_discs((300, 260), 160, seed=3)
    whole = label_instances(mask, method=method, min_size=10)
    tiled = label_instances_tiled(mask, method=method, min_size=10, tile=64, margin=32)
    assert tiled.dtype == np.int32
    assert tiled.max() == whole.max()
    # Every cell matches its whole-mask counterpart at IoU >= 0.9 (ties on shared edges aside).
    scores = instance_scores(whole, tiled, iou_thresholds=(0.9,), border=0)
    assert scores["f1"][0] == 1.0
    np.testing.assert_array_equal(tiled > 0, whole > 0)


def test_tiled_labelling_of_a_small_mask_is_the_whole_labelling():
    from celltune.inference.instances import label_instances_tiled

    mask = _random_discs((80, 90), 12, seed=1)
    np.testing.assert_array_equal(
        label_instances_tiled(mask, tile=64, margin=32), label_instances(mask)
    )


@pytest.mark.parametrize("h", [0.25, 0.5, 1.0, 2.0, 4.0, 8.0])
@pytest.mark.parametrize("smooth", [0.0, 1.0])
def test_h_maxima_by_region_equals_scikit_image_on_the_whole_image(h, smooth):
    """Crowded random discs and ellipses, regions touching the image edge, one region shallower
    than h: the region-by-region h-maxima are exactly scikit-image's over the whole image."""
    from scipy import ndimage as ndi
    from skimage.morphology import h_maxima

    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:120, :150]
    mask = np.zeros((120, 150), bool)
    for _ in range(40):
        cy, cx = rng.uniform(-5, 125), rng.uniform(-5, 155)
        ry, rx = rng.uniform(2, 12), rng.uniform(2, 12)
        mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    mask[60:62, 0:3] = True  # a sliver at the edge, shallower than most h
    distance = ndi.distance_transform_edt(mask)
    if smooth:
        distance = ndi.gaussian_filter(distance, smooth) * mask
    assert ndi.label(mask)[1] > 5
    expected = h_maxima(distance, h).astype(bool) & mask
    assert np.array_equal(instances.h_maxima_by_region(distance, mask, h), expected)
