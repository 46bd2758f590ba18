"""OME-Zarr and OME-TIFF slides: lazy reads, pixel sizes, NGFF labels and their errors."""

from __future__ import annotations

import numpy as np
import pytest

zarr = pytest.importorskip("zarr", reason="OME-Zarr support needs the [ome] extra (zarr)")
tifffile = pytest.importorskip("tifffile")

from celltune import ome  # noqa: E402
from celltune.errors import DataError, ImageReadError  # noqa: E402


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_round_trip_with_pixel_size_and_labels_seen_by_ome_zarr(tmp_path, version):
    reader = pytest.importorskip("ome_zarr.reader", reason="needs ome-zarr to check its reader")
    from ome_zarr.io import parse_url

    rng = np.random.default_rng(0)
    image = rng.integers(0, 4000, (2, 300, 200), dtype=np.uint16)
    path = ome.write_ome_zarr(tmp_path / "s.ome.zarr", image, axes="cyx", pixel_size=0.65,
                              version=version, chunks=(1, 128, 128))
    slide = ome.open_slide(path)
    assert (slide.axes, slide.shape_yx, slide.channels, slide.ngff_version) == (
        "cyx", (300, 200), 2, version)
    assert slide.pixel_size == pytest.approx(0.65)
    region = (slice(100, 250), slice(30, 190))
    np.testing.assert_array_equal(slide.read(region), np.moveaxis(image[:, 100:250, 30:190], 0, -1))

    labels = np.zeros((300, 200), np.int32)
    labels[10:40, 20:60], labels[200:220, 100:190] = 7, 3
    ome.write_ngff_labels(path, labels, "cells", pixel_size=0.65)
    nodes = list(reader.Reader(parse_url(str(path)))())
    found = [n for n in nodes if any(isinstance(s, reader.Label) for s in n.specs)]
    assert len(found) == 1
    np.testing.assert_array_equal(np.asarray(found[0].data[0]), labels)
    group = zarr.open_group(str(path / "labels" / "cells"), mode="r")
    meta, seen_version = ome.ngff_attrs(dict(group.attrs))
    assert seen_version == version and meta["image-label"]["source"]["image"] == "../../"
    scale = meta["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale == pytest.approx([0.65, 0.65])


def test_a_zarr_without_ngff_metadata_is_one_clear_error(tmp_path):
    path = tmp_path / "plain.zarr"
    zarr.open_group(str(path), mode="w").create_array("0", shape=(8, 8), dtype="u1")
    with pytest.raises(DataError, match=r"plain\.zarr: Zarr has no NGFF 'multiscales'"):
        ome.open_slide(path)


def test_units_are_converted_to_micrometres():
    axes = [{"name": "y", "unit": "nanometer"}, {"name": "x", "unit": "nanometer"}]
    assert ome._pixel_size(axes, np.array([325.0, 325.0])) == pytest.approx(0.325)
    assert ome._pixel_size([{"name": "y"}, {"name": "x"}], np.ones(2)) is None
    xml = ('<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image><Pixels '
           'PhysicalSizeX="250" PhysicalSizeXUnit="nm"/></Image></OME>')
    assert ome.ome_xml_pixel_size(xml) == pytest.approx(0.25)


def test_unfinished_labels_are_invisible_and_committed_ones_are_listed(tmp_path):
    path = ome.write_ome_zarr(tmp_path / "s.ome.zarr", np.zeros((64, 64), np.uint8))
    writer = ome.create_ngff_labels(path, "cells", (64, 64), chunks=32)
    writer.open_array()[:32, :32] = 1
    assert not writer.final.exists()
    assert "labels" not in dict(zarr.open_group(str(path / "labels"), mode="r").attrs)
    writer.commit()
    assert dict(zarr.open_group(str(path / "labels"), mode="r").attrs)["labels"] == ["cells"]
    assert not writer.partial.exists()


def test_pyramidal_ome_tiff_is_read_by_region_with_its_pixel_size(tmp_path):
    image = np.random.default_rng(1).integers(0, 255, (3, 1000, 900), dtype=np.uint8)
    path = tmp_path / "p.ome.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(image, subifds=1, tile=(256, 256),
                 metadata={"axes": "CYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
        tw.write(image[:, ::2, ::2], subfiletype=1, tile=(256, 256))
    slide = ome.open_slide(path)
    assert (slide.shape_yx, slide.levels, slide.pixel_size) == ((1000, 900), 2, 0.5)
    np.testing.assert_array_equal(slide.read((slice(100, 300), slice(850, 900))),
                                  np.moveaxis(image[:, 100:300, 850:900], 0, -1))
    coarse = ome.open_slide(path, level=1)
    assert coarse.shape_yx == (500, 450) and coarse.pixel_size == pytest.approx(1.0)


def test_ome_tiff_writer_keeps_the_pixel_size(tmp_path):
    labels = np.arange(600 * 520, dtype=np.int32).reshape(600, 520)
    path = ome.write_ome_tiff(tmp_path / "l.ome.tif", labels, pixel_size=0.25)
    slide = ome.open_slide(path)
    assert slide.pixel_size == pytest.approx(0.25)
    np.testing.assert_array_equal(slide.read()[..., 0], labels)


def test_a_chunk_that_fails_to_read_names_the_file_and_region(tmp_path):
    path = ome.write_ome_zarr(tmp_path / "s.ome.zarr", np.ones((64, 64), np.uint16),
                              chunks=(32, 32))
    (path / "0" / "1" / "0").write_bytes(b"not a chunk")
    slide = ome.open_slide(path)
    slide.read((slice(0, 32), slice(0, 64)))
    with pytest.raises(ImageReadError, match=r"s\.ome\.zarr: cannot read rows 32:64"):
        slide.read((slice(32, 64), slice(0, 64)))
