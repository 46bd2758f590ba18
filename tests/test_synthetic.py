"""Tests for the synthetic microscopy generator (celltune.data.synthetic and its helpers)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

from celltune.data.synth_cells import Blob, Cell, rasterize
from celltune.data.synthetic import (
    MODALITIES,
    contact_sheet_panels,
    generate,
    generate_image,
    outline,
    plan_modalities,
    plan_png,
    write_dataset,
)
from celltune.errors import ConfigError, DataError
from celltune.io import read_image, read_label
from celltune.viz.datasets import contact_sheet, save_png


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    write_dataset(root, n=12, size=48, seed=3)
    return root


def _manifest(root: Path) -> dict:
    return json.loads((root / "synthetic.json").read_text())


def test_layout_and_return_value(dataset: Path) -> None:
    names = [f"cell_{i:05d}" for i in range(1, 13)]
    images = sorted(p.stem for p in (dataset / "images").iterdir())
    labels = sorted(p.name for p in (dataset / "labels").iterdir())
    assert images == names
    assert labels == [f"{name}_label.tiff" for name in names]
    assert not [p for p in dataset.rglob("*.tmp*")]  # no leftovers from atomic writes


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    first = write_dataset(tmp_path / "a", n=8, size=40, seed=7)
    write_dataset(tmp_path / "b", n=8, size=40, seed=7)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a.keys() == b.keys()
    assert len(a) == 2 * 8 + 1
    assert all(a[key] == b[key] for key in a)
    assert [p.name for p in first] == sorted(k.split("/")[-1] for k in a if k.startswith("images"))


def test_different_seed_gives_different_images(tmp_path: Path) -> None:
    write_dataset(tmp_path / "a", n=4, size=40, seed=1, png_fraction=0)
    write_dataset(tmp_path / "b", n=4, size=40, seed=2, png_fraction=0)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    for i in range(1, 5):
        assert a[f"images/cell_{i:05d}.tif"] != b[f"images/cell_{i:05d}.tif"]


def test_all_modalities_present_in_manifest(dataset: Path) -> None:
    manifest = _manifest(dataset)
    assert manifest["params"] == {"n": 12, "size": 48, "seed": 3, "png_fraction": 0.1}
    modalities = [record["modality"] for record in manifest["images"]]
    assert sorted(modalities) == sorted(MODALITIES * 3)


@pytest.mark.parametrize("n", [4, 5, 7, 9, 13])
def test_every_dataset_of_four_or_more_has_every_modality(n: int) -> None:
    for seed in range(5):
        plan = plan_modalities(np.random.default_rng(seed), n)
        assert len(plan) == n
        assert set(plan) == set(MODALITIES)


def test_labels_are_int16_zlib_with_consecutive_nonempty_ids(dataset: Path) -> None:
    for path in sorted((dataset / "labels").iterdir()):
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            labels = page.asarray()
            assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
            assert "DateTime" not in page.tags  # a timestamp would break byte-identity
        assert labels.dtype == np.int16
        count = int(labels.max())
        assert count >= 1
        assert labels.min() == 0
        assert np.all(np.bincount(labels.ravel(), minlength=count + 1)[1:] > 0)


def test_manifest_cell_counts_match_label_files(dataset: Path) -> None:
    for record in _manifest(dataset)["images"]:
        labels = read_label(dataset / record["label"])
        assert record["cells"] == int(labels.max()) == len(np.unique(labels)) - 1


def test_images_and_labels_are_readable_through_io(dataset: Path) -> None:
    for record in _manifest(dataset)["images"]:
        image = read_image(dataset / record["image"])
        label = read_label(dataset / record["label"], shape=image.shape[:2])
        assert image.shape[:2] == label.shape == (48, 48)
        assert image.shape[2] == (3 if record["format"] == "png" else 1)


def test_tif_images_are_16bit_with_a_camera_floor(dataset: Path) -> None:
    for path in sorted((dataset / "images").glob("*.tif")):
        raw = tifffile.imread(path)
        assert raw.dtype == np.uint16 and raw.ndim == 2
        assert int(raw.min()) > 1000 and int(raw.max()) < 65535


def test_png_fraction_gives_rgb_uint8_png(tmp_path: Path) -> None:
    write_dataset(tmp_path / "d", n=10, size=32, seed=0, png_fraction=0.1)
    pngs = sorted((tmp_path / "d" / "images").glob("*.png"))
    assert len(pngs) == 1
    array = np.asarray(Image.open(pngs[0]))
    assert array.dtype == np.uint8 and array.shape == (32, 32, 3)
    assert (tmp_path / "d" / "labels" / f"{pngs[0].stem}_label.tiff").is_file()
    record = next(r for r in _manifest(tmp_path / "d")["images"] if r["name"] == pngs[0].stem)
    assert record["format"] == "png" and record["image"] == f"images/{pngs[0].name}"


def test_png_count_rule() -> None:
    rng = np.random.default_rng(0)
    assert len(plan_png(rng, 8, 0.01)) == 1  # at least one from 8 images on
    assert len(plan_png(rng, 7, 0.01)) == 0
    assert len(plan_png(rng, 48, 0.1)) == 5
    assert len(plan_png(rng, 48, 0.0)) == 0
    assert plan_png(rng, 5, 1.0) == {0, 1, 2, 3, 4}


def test_refuses_non_empty_folder_and_overwrites_on_request(tmp_path: Path) -> None:
    out = tmp_path / "d"
    write_dataset(out, n=6, size=24, seed=0, png_fraction=0)
    before = (out / "images" / "cell_00001.tif").read_bytes()
    with pytest.raises(DataError, match="--overwrite"):
        write_dataset(out, n=3, size=24, seed=1)
    assert (out / "images" / "cell_00001.tif").read_bytes() == before
    (out / "notes.txt").write_text("keep me")
    write_dataset(out, n=3, size=24, seed=1, overwrite=True)
    # Stale files of the larger earlier dataset are gone; unrelated files are left alone.
    assert len(list((out / "images").iterdir())) == len(list((out / "labels").iterdir())) == 3
    assert (out / "notes.txt").read_text() == "keep me"
    assert len(_manifest(out)["images"]) == 3


def test_empty_folder_is_accepted_and_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert len(write_dataset(tmp_path / "empty", n=1, size=16)) == 1
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="file"):
        write_dataset(tmp_path / "file", n=1, size=16)


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"n": 0}, "--n"), ({"size": 8}, "--size"), ({"png_fraction": 2}, "png")]
)
def test_bad_arguments_raise_config_error(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        write_dataset(tmp_path / "d", **kwargs)
    assert not (tmp_path / "d").exists()


def test_unknown_modality_lists_valid_ones() -> None:
    with pytest.raises(ConfigError, match="phase_contrast"):
        generate_image(0, 32, "confocal")


def _disk(size: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (xx - cx) ** 2 + (yy - cy) ** 2 < r * r


def test_rasterize_later_cells_occlude_and_hidden_cells_are_dropped() -> None:
    circle = lambda r: Blob((r, r))  # noqa: E731
    cells = [
        Cell((20.2, 20.1), circle(9.3)),
        Cell((33.1, 20.4), circle(4.2)),  # fully hidden under the next cell
        Cell((31.7, 20.6), circle(8.6)),
        Cell((70.0, 70.0), circle(3.0)),  # entirely outside the image
        Cell((-3.4, 2.3), circle(6.1)),  # cut by the border
    ]
    layout = rasterize(40, cells, brightness=np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    first, third, border = (
        _disk(40, 20.2, 20.1, 9.3),
        _disk(40, 31.7, 20.6, 8.6),
        _disk(40, -3.4, 2.3, 6.1),
    )
    expected = np.zeros((40, 40), np.int32)
    expected[first] = 1
    expected[third] = 2
    expected[border] = 3
    assert (first & third).any() and (first & border).sum() == 0
    np.testing.assert_array_equal(layout.ids, expected)
    assert layout.count == 3 and layout.drawn == 5
    np.testing.assert_array_equal(layout.brightness, [0.0, 1.0, 3.0, 5.0])


def test_rasterize_ellipse_orientation_and_radial_coordinate() -> None:
    # Semi-axes 9.5 (x) and 3.5 (y) turned by 90°: tall, narrow ellipse.
    layout = rasterize(32, [Cell((16.0, 16.0), Blob((9.5, 3.5), np.pi / 2))])
    yy, xx = np.mgrid[:32, :32]
    expected = ((yy - 16) / 9.5) ** 2 + ((xx - 16) / 3.5) ** 2 < 1
    np.testing.assert_array_equal(layout.ids == 1, expected)
    assert layout.radial[16, 16] == 0.0
    assert layout.radial[16 + 7, 16] == pytest.approx(7 / 9.5, abs=1e-5)
    assert np.all(layout.radial[~expected] == 1.0)


@pytest.mark.parametrize("modality", MODALITIES)
def test_generate_reports_visible_cells_matching_labels(modality: str) -> None:
    for seed in range(3):
        result = generate(seed, 64, modality)
        ids = np.unique(result.labels)
        assert result.labels.dtype == np.int16 and result.image.dtype == np.uint16
        assert result.image.shape == result.labels.shape == (64, 64)
        assert result.cells == len(ids) - 1 == int(ids[-1])
        assert np.array_equal(ids, np.arange(result.cells + 1))
        assert result.drawn >= result.cells


def test_generate_image_is_deterministic_per_seed() -> None:
    a, la = generate_image(5, 48, "dic")
    b, lb = generate_image(np.random.SeedSequence(5), 48, "dic")
    c, _ = generate_image(6, 48, "dic")
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert not np.array_equal(a, c)


def _inside_minus_outside(modality: str, seed: int) -> float:
    image, labels = generate_image(seed, 96, modality)
    fg = labels > 0
    return float(image[fg].mean() - image[~fg].mean())


def test_fluorescence_cells_are_brighter_than_background() -> None:
    assert all(_inside_minus_outside("fluorescence", seed) > 0 for seed in range(6))


def test_phase_contrast_cells_are_darker_with_bright_halo() -> None:
    for seed in range(6):
        image, labels = generate_image(seed, 96, "phase_contrast")
        fg = labels > 0
        ring = ndimage.binary_dilation(fg, iterations=2) & ~fg
        far = ~ndimage.binary_dilation(fg, iterations=12)
        assert image[fg].mean() < image[~fg].mean()
        if far.sum() > 50:
            assert image[ring].mean() > image[far].mean()


@pytest.mark.parametrize("modality", MODALITIES)
def test_cell_edges_carry_more_structure_than_empty_background(modality: str) -> None:
    """A network can find cells from local appearance in every modality."""
    for seed in range(4):
        image, labels = generate_image(seed, 96, modality)
        smooth = ndimage.gaussian_filter(image.astype(float), 1.0)
        edge_strength = np.hypot(*np.gradient(smooth))
        edges = outline(labels)
        far = ~ndimage.binary_dilation(labels > 0, iterations=6)
        if far.sum() > 100:
            assert edge_strength[edges].mean() > 2 * edge_strength[far].mean()


def test_large_images_work() -> None:
    image, labels = generate_image(1, 1024, "phase_contrast")
    assert image.shape == labels.shape == (1024, 1024)
    assert labels.max() > 10


def test_outline_marks_instance_boundaries() -> None:
    labels = np.zeros((7, 9), np.int16)
    labels[1:6, 1:5] = 1
    labels[1:6, 5:8] = 2
    expected = labels > 0
    expected[2:5, 2:4] = False  # interior of cell 1; column 4 touches cell 2
    expected[2:5, 6] = False  # interior of cell 2
    np.testing.assert_array_equal(outline(labels), expected)


def test_contact_sheet_titles_and_png(dataset: Path, tmp_path: Path) -> None:
    fig = contact_sheet(contact_sheet_panels(dataset, max_images=6))
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    modalities = [r["modality"] for r in _manifest(dataset)["images"][:6]]
    assert len(titles) == 6
    assert [t.splitlines()[1] for t in titles] == modalities
    out = save_png(contact_sheet(contact_sheet_panels(dataset, max_images=4)), tmp_path / "s.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(out).size == (4 * 320, 340)  # the figure's own size: 3.2 x 3.4 in per panel


def test_contact_sheet_panels_are_normalised_rgb_with_outlines(dataset: Path) -> None:
    panels = contact_sheet_panels(dataset, max_images=3)
    labels = read_label(dataset / "labels" / "cell_00001_label.tiff")
    first = panels[0]
    assert first.image.shape == (*labels.shape, 3) and first.image.dtype == np.float32
    assert first.image.min() >= 0.0 and first.image.max() <= 1.0
    np.testing.assert_array_equal(first.outline, outline(labels))
    assert first.title.startswith("cell_00001.")
    bare = contact_sheet_panels(dataset, max_images=3, outlines=False)
    assert all(p.outline is None for p in bare)
    np.testing.assert_array_equal(bare[0].image, first.image)


def test_contact_sheet_without_images_raises(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no images"):
        contact_sheet_panels(tmp_path)
