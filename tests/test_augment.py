import numpy as np
import pytest
from matplotlib.figure import Figure

from celltune.data.augment import AUGMENTATIONS, augmented_views, build_augmentation
from celltune.errors import ConfigError
from celltune.viz.datasets import augmentation_preview


def blob_pair(size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Instance map of a few discs and an image that is bright exactly on them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), dtype=np.int32)
    for cell_id in range(1, 7):
        cy, cx = rng.integers(8, size - 8, 2)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= rng.integers(16, 40)] = cell_id
    image = (0.1 + 0.8 * (labels > 0)).astype(np.float32)[..., None]
    return image, labels


def test_presets_are_registered():
    assert AUGMENTATIONS.names() == ["aug1", "aug2", "none"]
    assert build_augmentation("none") is None


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ConfigError) as info:
        build_augmentation("aug3")
    message = str(info.value)
    assert all(name in message for name in ("none", "aug1", "aug2"))


def test_aug1_moves_image_and_mask_together_and_covers_all_orientations():
    augment = build_augmentation("aug1")
    mask = np.arange(12, dtype=np.int32).reshape(3, 4) % 5
    mask = np.pad(mask, ((0, 1), (0, 0)))  # square 4x4, asymmetric content
    image = mask.astype(np.float32)[..., None] / 4
    orientations = set()
    for seed in range(64):
        out_image, out_mask = augment(image, mask, seed)
        assert np.array_equal(out_image[..., 0] * 4, out_mask.astype(np.float32))
        orientations.add(out_mask.tobytes())
    # 4 rotations x optional mirror: the full dihedral group of the square.
    assert len(orientations) == 8


def test_instance_ids_and_their_areas_survive_aug1():
    image, labels = blob_pair()
    _, out = build_augmentation("aug1")(image, labels, 11)
    ids, counts = np.unique(labels, return_counts=True)
    out_ids, out_counts = np.unique(out, return_counts=True)
    assert ids.tolist() == out_ids.tolist()
    assert counts.tolist() == out_counts.tolist()


def test_aug2_keeps_binary_masks_binary_and_images_in_range():
    augment = build_augmentation("aug2")
    image, labels = blob_pair()
    binary = (labels > 0).astype(np.uint8)
    for seed in range(30):
        out_image, out_mask = augment(image, binary, seed)
        assert out_image.dtype == np.float32 and out_image.shape == image.shape
        assert out_mask.dtype == np.uint8 and out_mask.shape == binary.shape
        assert set(np.unique(out_mask).tolist()) <= {0, 1}
        assert out_image.min() >= 0.0 and out_image.max() <= 1.0


def test_aug2_keeps_instance_ids_as_ids():
    image, labels = blob_pair()
    augment = build_augmentation("aug2")
    for seed in range(10):
        _, out = augment(image, labels, seed)
        assert set(np.unique(out).tolist()) <= set(np.unique(labels).tolist())


def test_aug2_image_and_mask_stay_aligned():
    augment = build_augmentation("aug2")
    image, labels = blob_pair(seed=3)
    binary = (labels > 0).astype(np.uint8)
    for seed in range(20):
        out_image, out_mask = augment(image, binary, seed)
        aligned = np.corrcoef(out_image[..., 0].ravel(), out_mask.ravel())[0, 1]
        shifted = np.corrcoef(out_image[..., 0].ravel(), np.roll(out_mask, 9, axis=1).ravel())[0, 1]
        assert aligned > 0.8, seed
        assert shifted < aligned - 0.3, seed


def test_same_seed_same_result_and_different_seeds_differ():
    augment = build_augmentation("aug2")
    image, labels = blob_pair()
    first = augment(image, labels, 5)
    # Interleave another call to show the result does not depend on call history.
    augment(image, labels, 6)
    again = augment(image, labels, 5)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    others = [augment(image, labels, s)[0] for s in range(6, 10)]
    assert not any(np.array_equal(first[0], o) for o in others)


def test_same_seed_is_reproducible_across_instances():
    image, labels = blob_pair()
    a = build_augmentation("aug2")(image, labels, 42)
    b = build_augmentation("aug2")(image, labels, 42)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_augmentation_preview_returns_figure(tmp_path):
    image, labels = blob_pair()
    fig = augmentation_preview(augmented_views(image, labels, "aug2", n=5, seed=1), "aug2")
    assert isinstance(fig, Figure)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 5
    fig.savefig(tmp_path / "preview.png")
    assert (tmp_path / "preview.png").stat().st_size > 0


def test_augmentation_preview_accepts_rgb_and_none_preset():
    image, labels = blob_pair()
    views = augmented_views(np.repeat(image, 3, axis=-1), labels, "none", n=2)
    fig = augmentation_preview(views, "none")
    assert len([ax for ax in fig.axes if ax.images]) == 2
    assert [ax.get_title() for ax in fig.axes if ax.images] == ["none #0", "none #1"]


def test_augmented_views_are_seeded_and_reproducible():
    image, labels = blob_pair()
    a = augmented_views(image, labels, "aug2", n=3, seed=4)
    b = augmented_views(image, labels, "aug2", n=3, seed=4)
    assert len(a) == 3
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b, strict=True))
    seeds = np.random.SeedSequence(4).generate_state(3)
    direct = build_augmentation("aug2")(image, labels, int(seeds[1]))
    assert np.array_equal(a[1][0], direct[0]) and np.array_equal(a[1][1], direct[1])
    with pytest.raises(ConfigError):
        augmented_views(image, labels, "bogus", n=1)


def test_uneven_illumination_adds_a_smooth_field_only_to_the_image():
    import albumentations as A

    from celltune.data.augment import UnevenIllumination

    compose = A.Compose([UnevenIllumination(amplitude=(0.1, 0.1), p=1.0)])
    compose.set_random_seed(3)
    image = np.full((64, 80, 1), 0.5, np.float32)
    mask = np.zeros((64, 80), np.uint8)
    mask[10:20, 10:20] = 1
    out = compose(image=image, mask=mask)
    delta = out["image"][..., 0] - 0.5
    assert np.abs(delta).max() == pytest.approx(0.1, abs=0.02)  # peak inside or near the field
    assert np.abs(np.diff(delta, axis=1)).max() < 0.02  # smooth: no edges that look like cells
    np.testing.assert_array_equal(out["mask"], mask)
