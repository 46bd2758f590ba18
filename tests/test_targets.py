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


def test_gaps_target_cuts_only_where_two_cells_meet():
    from celltune.data.targets import binary_gaps_target, contact_mask

    expected = [
        # columns 3/4 are the contact between cells 1 and 2; borders with the background
        # (column 1, row 2) stay foreground, unlike the boundary class above.
        [0, 1, 1, 0, 0, 1, 1],
        [0, 1, 1, 0, 0, 1, 1],
        [0, 1, 1, 0, 0, 1, 1],
        [0, 0, 0, 0, 0, 0, 0],
    ]
    gaps = binary_gaps_target(TOUCHING)
    assert gaps.dtype == np.float32 and gaps.shape == (1, 4, 7)
    assert gaps[0].astype(int).tolist() == expected
    assert contact_mask(TOUCHING).sum() == 6
    lone = (TOUCHING == 1).astype(np.int32)  # a cell alone: the same as the binary target
    np.testing.assert_array_equal(binary_gaps_target(lone), binary_target(lone))
    assert TARGETS.info("binary_gaps")["classes"] == 1


def test_gaps_target_splits_touching_discs_again():
    from celltune.data.targets import binary_gaps_target
    from celltune.inference.instances import label_instances

    yy, xx = np.mgrid[:40, :60]
    labels = np.zeros((40, 60), np.int32)
    labels[(yy - 20) ** 2 + (xx - 20) ** 2 <= 12**2] = 1
    labels[((yy - 20) ** 2 + (xx - 42) ** 2 <= 12**2) & (labels == 0)] = 2  # they touch
    plain = label_instances(binary_target(labels)[0] > 0, method="components", min_size=0)
    split = label_instances(binary_gaps_target(labels)[0] > 0, method="components", min_size=0)
    assert plain.max() == 1 and split.max() == 2
    for cell in (1, 2):
        found = np.bincount(split[labels == cell]).argmax()
        iou = ((split == found) & (labels == cell)).sum() / ((split == found) | (labels == cell)).sum()
        assert found > 0 and iou > 0.9


def _tiny_config(root, head: str, gaps: bool):
    from celltune.config import RunConfig

    return RunConfig.model_validate({
        "data": {"root": str(root), "filter": "all", "val": 2, "crop": 64},
        "model": {"name": "unet_plain", "head": head, "options": {"tiny": True}},
        "train": {"gaps": gaps},
    })


def test_gaps_option_trains_the_binary_head_on_the_gap_target(tmp_path):
    from celltune.data.samples import Sample, Splits
    from celltune.data.targets import binary_gaps_target
    from celltune.io import write_tiff
    from celltune.training.fit import build_loaders

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    labels = np.zeros((64, 64), np.int32)
    labels[10:30, 10:30], labels[10:30, 30:50] = 1, 2  # two squares sharing an edge
    write_tiff(tmp_path / "images" / "a.tif", (labels > 0).astype(np.uint8) * 200)
    write_tiff(tmp_path / "labels" / "a_label.tiff", labels)
    sample = Sample(tmp_path / "images" / "a.tif", tmp_path / "labels" / "a_label.tiff")
    splits = Splits(train=[sample], val=[sample], test=[])
    train, val = build_loaders(_tiny_config(tmp_path, "binary", True), splits)
    assert train.dataset.target == val.dataset.target == "binary_gaps"
    whole = val.dataset[0]["mask"].numpy()
    np.testing.assert_array_equal(whole, binary_gaps_target(labels))
    plain, _ = build_loaders(_tiny_config(tmp_path, "binary", False), splits)
    assert plain.dataset.target == "binary"
    with pytest.raises(ConfigError, match="--gaps"):
        build_loaders(_tiny_config(tmp_path, "boundary", True), splits)
