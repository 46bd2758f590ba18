import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import celltune.data.dataset as dataset_module
from celltune.data.dataset import (
    CropDataset,
    ImageCache,
    WholeImageDataset,
    collate_whole,
    load_pair,
)
from celltune.data.samples import Sample
from celltune.errors import ConfigError, DataError, ImageReadError
from celltune.io import write_tiff


def discs(shape: tuple[int, int], centres: list[tuple[int, int]], radius: int = 4) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, dtype=np.int32)
    for cell_id, (cy, cx) in enumerate(centres, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = cell_id
    return labels


def write_sample(folder, name: str, labels: np.ndarray, rgb: bool = False) -> Sample:
    """16-bit image (high floor, bright cells) plus its int16 label map, as the real data."""
    rng = np.random.default_rng(len(name))
    image = 20000 + 3000 * (labels > 0) + rng.integers(0, 200, labels.shape)
    image = image.astype(np.uint16)
    if rgb:
        image = np.stack([image, image // 2, image], axis=-1)
    (folder / "images").mkdir(exist_ok=True)
    (folder / "labels").mkdir(exist_ok=True)
    write_tiff(folder / "images" / f"{name}.tif", image)
    write_tiff(folder / "labels" / f"{name}_label.tiff", labels.astype(np.int16))
    return Sample(folder / "images" / f"{name}.tif", folder / "labels" / f"{name}_label.tiff")


@pytest.fixture
def samples(tmp_path):
    rng = np.random.default_rng(0)
    out = []
    for k in range(3):
        centres = [tuple(int(v) for v in rng.integers(5, 59, 2)) for _ in range(6)]
        out.append(write_sample(tmp_path, f"cell_{k:05d}", discs((64, 80), centres)))
    return out


def test_load_pair_normalises_and_reads_labels(samples):
    image, labels = load_pair(samples[0])
    assert image.dtype == np.float32 and image.shape == (64, 80, 1)
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert labels.dtype == np.int32 and labels.shape == (64, 80)
    # Cells are 3000 above a noisy floor, so after normalisation they sit near the top.
    assert image[labels > 0].mean() > 0.8 > 0.2 > image[labels == 0].mean()


def test_load_pair_channels_resize_and_missing_label(tmp_path):
    labels = discs((40, 60), [(20, 30)], radius=6)
    sample = write_sample(tmp_path, "rgb", labels, rgb=True)
    image, _ = load_pair(sample, channels=3)
    assert image.shape == (40, 60, 3)
    small, small_labels = load_pair(sample, resize=0.5)
    assert small.shape == (20, 30, 1) and small_labels.shape == (20, 30)
    # Nearest-neighbour keeps ids exact: output pixel r samples the source pixel under its
    # centre, (r + 0.5) * 2 -> 2r + 1, the same half-pixel convention as the bilinear image.
    assert np.array_equal(small_labels, labels[1::2, 1::2])
    image, none = load_pair(Sample(sample.image, None))
    assert none is None and image.shape == (40, 60, 1)


def test_load_pair_errors_name_the_file(tmp_path, samples):
    with pytest.raises(ImageReadError, match=r"missing\.tif"):
        load_pair(Sample(tmp_path / "missing.tif", None))
    other = write_sample(tmp_path, "other", np.zeros((10, 10), np.int32))
    with pytest.raises(ImageReadError, match=r"other_label\.tiff"):
        load_pair(Sample(samples[0].image, other.label))
    with pytest.raises(ConfigError, match="channels"):
        load_pair(samples[0], channels=2)


def test_crop_items_have_shape_and_dtype_per_target(samples):
    expected = {
        "binary": ((1, 32, 32), torch.float32),
        "two_class": ((32, 32), torch.int64),
        "three_class": ((32, 32), torch.int64),
    }
    for target, (shape, dtype) in expected.items():
        ds = CropDataset(samples, crop=32, augment="aug2", target=target)
        item = ds[0]
        assert set(item) == {"image", "mask"}
        assert item["image"].shape == (1, 32, 32) and item["image"].dtype == torch.float32
        assert item["mask"].shape == shape and item["mask"].dtype == dtype
    assert len(ds) == 3
    assert len(CropDataset(samples, crop=32, samples_per_epoch=7)) == 7


def test_small_images_are_zero_padded_into_the_crop(tmp_path):
    labels = discs((20, 24), [(10, 12)], radius=5)
    sample = write_sample(tmp_path, "small", labels)
    ds = CropDataset([sample], crop=32, augment="none", samples_per_epoch=6)
    for i in range(6):
        item = ds[i]
        mask, image = item["mask"][0], item["image"][0]
        # The whole small image lies inside the crop: every cell pixel is kept ...
        assert mask.sum().item() == (labels > 0).sum()
        # ... and 32*32 - 20*24 pixels of padding are zero in image and mask alike.
        assert (image == 0).sum().item() >= 32 * 32 - 20 * 24
        assert (mask[image == 0] == 0).all()


def test_binary_masks_stay_binary_after_aug2(samples):
    ds = CropDataset(samples, crop=32, augment="aug2", samples_per_epoch=12)
    for i in range(12):
        assert set(ds[i]["mask"].unique().tolist()) <= {0.0, 1.0}


def test_items_depend_only_on_seed_epoch_and_index(samples):
    a = CropDataset(samples, crop=32, augment="aug2", seed=3, samples_per_epoch=6)
    b = CropDataset(samples, crop=32, augment="aug2", seed=3, samples_per_epoch=6)
    b[5], b[2]  # a different access history must not matter
    a.set_epoch(2)
    for i in (0, 4):
        item = a[i]
        for other in (b[(2, i)], a[(2, i)]):
            assert torch.equal(item["image"], other["image"])
            assert torch.equal(item["mask"], other["mask"])
    assert not torch.equal(a[(2, 0)]["image"], a[(3, 0)]["image"])
    c = CropDataset(samples, crop=32, augment="aug2", seed=4, samples_per_epoch=6)
    assert not torch.equal(a[(2, 0)]["image"], c[(2, 0)]["image"])


def test_each_epoch_visits_every_sample_once(samples, monkeypatch):
    ds = CropDataset(samples, crop=32, augment="none", cache=False)
    seen = []
    monkeypatch.setattr(ds, "load", lambda k: (seen.append(k), CropDataset.load(ds, k))[1])
    for epoch in range(3):
        seen.clear()
        for i in range(len(ds)):
            ds[(epoch, i)]
        assert sorted(seen) == [0, 1, 2]


def test_workers_and_epoch_sampler_reproduce_main_process(samples):
    ds = CropDataset(samples, crop=32, augment="aug2", seed=1, samples_per_epoch=8)
    sampler = ds.sampler()
    sampler.set_epoch(4)
    main = torch.cat([b["image"] for b in DataLoader(ds, batch_size=4, sampler=sampler)])
    workers = DataLoader(ds, batch_size=4, sampler=sampler, num_workers=2)
    assert torch.equal(main, torch.cat([b["image"] for b in workers]))
    ds.set_epoch(4)
    assert torch.equal(main[3], ds[3]["image"])


def test_foreground_sampling_finds_sparse_cells(tmp_path):
    labels = discs((128, 128), [(100, 20)], radius=3)
    sample = write_sample(tmp_path, "sparse", labels)
    always = CropDataset(
        [sample], crop=32, augment="aug1", foreground_sampling=1.0, samples_per_epoch=20
    )
    assert all(always[i]["mask"].sum() > 0 for i in range(20))
    never = CropDataset(
        [sample], crop=32, augment="aug1", foreground_sampling=0.0, samples_per_epoch=20
    )
    assert any(never[i]["mask"].sum() == 0 for i in range(20))


def test_whole_images_are_padded_to_the_divisor(tmp_path):
    labels = discs((50, 70), [(48, 10), (20, 60)], radius=4)
    sample = write_sample(tmp_path, "whole", labels)
    ds = WholeImageDataset([sample], target="two_class")
    item = ds[0]
    assert item["image"].shape == (1, 64, 96) and item["mask"].shape == (64, 96)
    assert item["size"] == (50, 70) and item["name"] == "whole"
    image = item["image"][0]
    # Reflection about the last row/column: padded row 50 mirrors row 48, column 70 mirrors 68.
    assert torch.equal(image[50], image[48]) and torch.equal(image[:, 70], image[:, 68])
    assert item["mask"][50:].sum() == 0 and item["mask"][:, 70:].sum() == 0
    assert item["mask"][:50, :70].sum() == (labels > 0).sum()
    batch = next(iter(DataLoader(ds, batch_size=1, collate_fn=collate_whole)))
    assert batch["image"].shape == (1, 1, 64, 96) and batch["mask"].shape == (1, 64, 96)
    assert batch["name"] == ["whole"] and batch["size"] == [(50, 70)]


def test_whole_image_without_label_has_no_mask(samples):
    item = WholeImageDataset([Sample(samples[0].image, None)], divisor=16)[0]
    assert "mask" not in item and item["image"].shape == (1, 64, 80)


def test_cache_returns_same_arrays_without_rereading(samples, monkeypatch):
    reads = []
    original = dataset_module.read_image
    monkeypatch.setattr(dataset_module, "read_image", lambda p: (reads.append(p), original(p))[1])
    cache = ImageCache()
    first = cache.get(samples[0])
    second = cache.get(samples[0])
    assert len(reads) == 1 and first[0] is second[0] and first[1] is second[1]
    assert not first[0].flags.writeable
    cache.get(samples[0], channels=3)  # a different key is a separate entry
    assert len(reads) == 2 and len(cache) == 2
    ds = CropDataset(samples[:1], crop=32, samples_per_epoch=5, cache=cache)
    for i in range(5):
        ds[i]
    assert len(reads) == 2 and cache.hits == 6


def test_cache_evicts_least_recently_used_within_budget(samples):
    one = sum(a.nbytes for a in load_pair(samples[0]))
    cache = ImageCache(max_bytes=2 * one)
    for s in (samples[0], samples[1], samples[0], samples[2]):
        cache.get(s)
    assert len(cache) == 2 and cache.nbytes <= 2 * one
    cache.get(samples[0])
    assert cache.misses == 3  # sample 1 was evicted, sample 0 stayed as most recent
    tiny = ImageCache(max_bytes=one - 1)
    tiny.get(samples[0])
    assert len(tiny) == 0
    restored = pickle.loads(pickle.dumps(cache))
    assert len(restored) == 2 and restored.get(samples[0])[0] is not None


def test_invalid_options_raise_user_errors(samples, tmp_path):
    with pytest.raises(DataError, match="no label"):
        CropDataset([Sample(samples[0].image, None)])
    with pytest.raises(DataError):
        CropDataset([])
    with pytest.raises(ConfigError, match="aug1"):
        CropDataset(samples, augment="heavy")
    with pytest.raises(ConfigError, match="three_class"):
        CropDataset(samples, target="instances")
    with pytest.raises(ConfigError, match="foreground_sampling"):
        CropDataset(samples, foreground_sampling=1.5)
    broken = tmp_path / "images" / "broken.tif"
    broken.write_bytes(b"not a tiff")
    with pytest.raises(ImageReadError, match=r"broken\.tif"):
        CropDataset([Sample(broken, samples[0].label)], cache=False)[0]
