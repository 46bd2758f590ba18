import numpy as np
import pytest
import torch

from celltune.data.targets import (
    TARGETS,
    binary_target,
    boundary_mask,
    make_target,
    num_classes,
    three_class_target,
    two_class_target,
)
from celltune.errors import ConfigError

# Two cells touching along a vertical line, background on the left and bottom.
TOUCHING = np.array(
    [
        [0, 1, 1, 1, 2, 2, 2],
        [0, 1, 1, 1, 2, 2, 2],
        [0, 1, 1, 1, 2, 2, 2],
        [0, 0, 0, 0, 0, 0, 0],
    ],
    dtype=np.int32,
)


def test_binary_target_is_float_with_channel_axis():
    out = binary_target(TOUCHING)
    assert out.dtype == np.float32
    assert out.shape == (1, 4, 7)
    assert out[0].tolist() == (TOUCHING > 0).astype(float).tolist()


def test_two_class_target_is_int64_class_indices():
    out = two_class_target(np.array([[0, 5], [17, 0]]))
    assert out.dtype == np.int64
    assert out.tolist() == [[0, 1], [1, 0]]


def test_three_class_single_cell_has_ring_boundary_and_interior():
    labels = np.zeros((5, 5), dtype=np.int32)
    labels[1:4, 1:4] = 7
    expected = [
        [0, 0, 0, 0, 0],
        [0, 2, 2, 2, 0],
        [0, 2, 1, 2, 0],
        [0, 2, 2, 2, 0],
        [0, 0, 0, 0, 0],
    ]
    out = three_class_target(labels)
    assert out.dtype == np.int64
    assert out.tolist() == expected


def test_three_class_separates_touching_cells_and_ignores_image_border():
    expected = [
        # column 1 touches background, columns 3/4 touch each other, row 2 touches background;
        # the top and right image edges are not boundaries.
        [0, 2, 1, 2, 2, 1, 1],
        [0, 2, 1, 2, 2, 1, 1],
        [0, 2, 2, 2, 2, 2, 2],
        [0, 0, 0, 0, 0, 0, 0],
    ]
    assert three_class_target(TOUCHING).tolist() == expected


def test_boundary_uses_four_neighbours_only():
    labels = np.array([[1, 0], [0, 2]])
    # Each cell pixel has background as a 4-neighbour; the diagonal contact is irrelevant.
    assert boundary_mask(labels).tolist() == [[True, False], [False, True]]
    solid = np.ones((3, 3), dtype=np.int32)
    assert not boundary_mask(solid).any()


def test_make_target_returns_tensors_and_num_classes():
    assert make_target(TOUCHING, "binary").dtype == torch.float32
    assert make_target(TOUCHING, "two_class").dtype == torch.int64
    assert make_target(TOUCHING, "three_class").shape == (4, 7)
    assert [num_classes(k) for k in ("binary", "two_class", "three_class")] == [1, 2, 3]


def test_unknown_target_lists_valid_names():
    with pytest.raises(ConfigError) as info:
        make_target(TOUCHING, "four_class")
    for name in TARGETS.names():
        assert name in str(info.value)


def test_rejects_non_2d_labels():
    with pytest.raises(ValueError):
        binary_target(np.zeros((2, 2, 2)))
