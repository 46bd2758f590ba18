"""Dataset fingerprint: label statistics on hand-made maps, colour, sizes, sampling, cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from celltune.data import fingerprint as fpmod
from celltune.data.fingerprint import (
    Fingerprint,
    carries_colour,
    compute_fingerprint,
    equivalent_diameter,
    fingerprint_for,
    object_areas,
    sample_indices,
    touching_objects,
)
from celltune.data.samples import Sample
from celltune.io import write_png, write_tiff


def disc(label: np.ndarray, cy: int, cx: int, r: int, ident: int) -> np.ndarray:
    """Paint a disc of radius ``r`` with ``ident`` on background pixels only."""
    yy, xx = np.mgrid[: label.shape[0], : label.shape[1]]
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    label[inside & (label == 0)] = ident
    return label


def pair(root: Path, name: str, label: np.ndarray, image: np.ndarray | None = None) -> Sample:
    """An image (a ramp unless given) and its label, written as the NeurIPS layout names them."""
    if image is None:
        image = np.arange(label.size, dtype=np.uint16).reshape(label.shape)
    suffix = ".png" if image.dtype == np.uint8 else ".tif"
    img = write_tiff(root / "images" / f"{name}{suffix}", image) if suffix == ".tif" else \
        write_png(root / "images" / f"{name}{suffix}", image)
    lab = write_tiff(root / "labels" / f"{name}_label.tiff", label.astype(np.int16))
    return Sample(img, lab)


# --- single label maps ------------------------------------------------------------------------


@pytest.mark.parametrize("r", [4, 10, 25])
def test_a_disc_of_radius_r_has_equivalent_diameter_2r(r):
    label = disc(np.zeros((128, 128), np.int32), 64, 64, r, 1)
    (area,) = object_areas(label)
    assert abs(equivalent_diameter(area) - 2 * r) < 1.0
    assert abs(area - np.pi * r * r) / (np.pi * r * r) < 0.1


def test_touching_counts_objects_sharing_an_edge_not_a_corner():
    label = np.zeros((60, 80), np.int32)
    disc(label, 20, 20, 8, 1)
    disc(label, 20, 37, 8, 2)  # its leftmost column (29) is right next to disc 1's rightmost (28)
    disc(label, 50, 70, 5, 3)  # far away
    assert touching_objects(label) == 2
    corner = np.zeros((4, 4), np.int32)
    corner[0, 0], corner[1, 1] = 1, 2  # diagonal neighbours: not a shared boundary
    assert touching_objects(corner) == 0
    assert touching_objects(np.zeros((5, 5), np.int32)) == 0


def test_object_areas_ignore_unused_and_large_ids():
    label = np.zeros((10, 10), np.int32)
    label[0, :3] = 7
    label[5, :] = 5_000_000  # past the bincount limit: counted the other way
    assert sorted(object_areas(label).tolist()) == [3, 10]
    assert sorted(object_areas(label.clip(0, 9)).tolist()) == [3, 10]


# --- colour ---------------------------------------------------------------------------------


def test_colour_is_differing_channels_that_are_not_a_tint():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 255, (32, 32, 1)).astype(np.float32)
    assert not carries_colour(gray)
    assert not carries_colour(np.repeat(gray, 3, axis=-1))  # R = G = B
    tint = np.rint(gray * np.array([0.2, 0.4, 1.0], np.float32))  # pseudo-coloured channel
    assert not carries_colour(tint)
    green = np.concatenate([gray * 0, gray, gray * 0], axis=-1)  # one channel varies
    assert not carries_colour(green)
    assert carries_colour(rng.integers(0, 255, (32, 32, 3)).astype(np.float32))
    two = np.concatenate([gray, rng.integers(0, 255, (32, 32, 1))], axis=-1)  # 2 stains
    assert carries_colour(two.astype(np.float32))


def test_fingerprint_tells_a_colour_set_from_a_gray_set(tmp_path):
    rng = np.random.default_rng(1)
    label = disc(np.zeros((32, 32), np.int32), 16, 16, 6, 1)
    gray = rng.integers(0, 255, (32, 32), dtype=np.uint8)
    gray_set = [pair(tmp_path / "g", f"g{i}", label, np.dstack([gray] * 3)) for i in range(3)]
    colour_set = [pair(tmp_path / "c", f"c{i}", label,
                       rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for i in range(3)]
    gray_fp, colour_fp = compute_fingerprint(gray_set), compute_fingerprint(colour_set)
    assert (gray_fp.colour_images, gray_fp.colour) == (0, False)
    assert (colour_fp.colour_images, colour_fp.colour) == (3, True)
    assert colour_fp.channels == {"3": 3} and colour_fp.dtypes == {"uint8": 3}


# --- whole sets -------------------------------------------------------------------------------


@pytest.fixture
def hand_made(tmp_path) -> list[Sample]:
    """Three 100x100 images with discs of radius 10; foreground fractions are known."""
    samples = []
    for i, centres in enumerate([[(25, 25), (75, 75)], [(25, 25)], [(20, 20), (20, 40)]]):
        label = np.zeros((100, 100), np.int32)
        for k, (cy, cx) in enumerate(centres, start=1):
            disc(label, cy, cx, 10, k)
        samples.append(pair(tmp_path, f"img{i}", label))
    return samples


def test_fingerprint_of_hand_made_labels(hand_made):
    fp = compute_fingerprint(hand_made)
    assert (fp.images, fp.sampled, fp.objects) == (3, 3, 5)
    assert abs(fp.object_diameter - 20) < 1.0
    assert fp.objects_per_image == 2.0
    disc_area = fp.object_area
    expected = np.mean([2 * disc_area, disc_area, 2 * disc_area - 1]) / 100**2
    assert fp.foreground_fraction == pytest.approx(expected, abs=2e-4)
    # img2's discs (centres 20 apart, radius 10) meet at column 30: both touch, the rest do not.
    assert fp.touching_share == pytest.approx(2 / 5)
    assert fp.height == (100, 100.0, 100) and fp.dtypes == {"uint16": 3}
    assert fp.intensity["p50"] == pytest.approx(4999.5, rel=0.01)
    assert fp.intensity["p1"] < fp.intensity["p50"] < fp.intensity["p99.8"]
    assert (fp.groups, fp.group_rules, fp.unreadable) == (3, (), ())


def test_sizes_groups_and_unreadable_files(tmp_path):
    label = disc(np.zeros((64, 96), np.int32), 30, 30, 5, 1)
    samples = [pair(tmp_path, "movie_t1", label), pair(tmp_path, "movie_t2", label[:32]),
               pair(tmp_path, "other", label[:, :64])]
    broken = tmp_path / "images" / "broken.tif"
    broken.write_bytes(b"not a tiff")
    samples.append(Sample(broken, samples[0].label))
    fp = compute_fingerprint(samples)
    assert fp.images == 4 and fp.sampled == 3
    assert fp.height == (32, 64.0, 64) and fp.width == (64, 96.0, 96)
    assert fp.groups == 3 and fp.group_rules == ("time-lapse movie (<movie>_t<frame>)",)
    assert len(fp.unreadable) == 1 and "broken.tif" in fp.unreadable[0]


def test_pixel_statistics_read_a_bounded_even_sample(hand_made, monkeypatch):
    assert sample_indices(3, 5) == [0, 1, 2]
    assert sample_indices(10, 3) == [0, 4, 9]  # spread evenly, first and last included
    fp = compute_fingerprint(hand_made, max_images=2)
    assert (fp.images, fp.sampled) == (3, 2) and fp.objects == 4  # img0 and img2


def test_round_trip_through_json(hand_made):
    fp = compute_fingerprint(hand_made)
    assert Fingerprint.from_dict(json.loads(json.dumps(fp.to_dict()))) == fp


def test_cache_is_read_while_the_files_are_unchanged(hand_made, tmp_path, monkeypatch):
    cache = tmp_path / "run" / "fingerprint.json"
    first = fingerprint_for(hand_made, cache)
    assert cache.is_file()

    def no_reading(path):
        raise AssertionError(f"{path} was read although the cache is current")

    monkeypatch.setattr(fpmod, "read_image", no_reading)
    assert fingerprint_for(list(reversed(hand_made)), cache) == first  # order does not matter
    # A label file that changes (new modification time) makes the cache stale.
    stat = os.stat(hand_made[0].label)
    os.utime(hand_made[0].label, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="was read"):
        fingerprint_for(hand_made, cache)


def test_a_damaged_cache_is_recomputed(hand_made, tmp_path):
    cache = tmp_path / "fp.json"
    cache.write_text("{not json")
    assert fingerprint_for(hand_made, cache) == compute_fingerprint(hand_made)
    assert json.loads(cache.read_text())["fingerprint"]["images"] == 3
    assert fingerprint_for(hand_made, tmp_path / "other.json", write=False).images == 3
    assert not (tmp_path / "other.json").exists()
