"""A whole slide's GeoJSON and CSV, block by block: the same as one image's, in bounded memory."""

from __future__ import annotations

import csv
import json
import tracemalloc

import numpy as np
import pytest

zarr = pytest.importorskip("zarr", reason="slide tables need the [ome] extra (zarr)")

from celltune.errors import ConfigError  # noqa: E402
from celltune.inference import slides  # noqa: E402
from celltune.inference.measurements import measure_cells  # noqa: E402
from celltune.inference.parallel import plan_blocks  # noqa: E402
from celltune.inference.slide_cells import cell_boxes, write_slide_cells  # noqa: E402
from celltune.integrations.geojson import cells_to_features  # noqa: E402
from celltune.ome import create_ome_zarr, open_slide, write_ome_zarr  # noqa: E402
from slide_helpers import (  # noqa: E402
    disc_image,
    stand_in_predictor,
    straddling_centres,
    write_slide,
)

BLOCK = 64


def _awkward_labels() -> np.ndarray:
    """Cells no block holds whole: a bar across three blocks, a ring around a hole on a block
    corner, one id in two pieces far apart, pieces meeting at one corner, sparse large ids,
    cells on the slide's edges."""
    labels = np.zeros((200, 230), np.int64)
    labels[10:14, 20:200] = 7_000_000_001  # bar over three block columns
    labels[50:80, 50:80] = 123_456_789  # ring around the corner (64, 64)
    labels[58:72, 58:72] = 0
    labels[100:105, 5:9] = 42  # one id, two pieces in different blocks
    labels[180:190, 150:160] = 42
    labels[120:122, 120:122] = 5  # two pixels that touch only at a corner
    labels[122:124, 122:124] = 5
    labels[0:6, 224:230] = 99  # top-right corner of the slide
    labels[190:200, 0:12] = 3  # bottom-left corner
    labels[130:140, 60:70] = 8  # touching another cell
    labels[130:140, 70:75] = 9
    return labels


def _whole_image_tables(labels, image, source):
    rows = measure_cells(labels, image)
    return rows, cells_to_features(labels, rows, source=source)


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _by_label(features):
    return {f["properties"]["label"]: f for f in features}


def _assert_same_features(got, want):
    """Same cells, outlines and IDs; measurements equal to float rounding."""
    got, want = _by_label(got), _by_label(want)
    assert got.keys() == want.keys()
    for label, feature in want.items():
        assert got[label]["geometry"] == feature["geometry"], label
        assert got[label]["id"] == feature["id"]
        assert got[label]["properties"]["measurements"] == pytest.approx(
            feature["properties"]["measurements"], rel=1e-6)
    return got


def _assert_same_rows(got, want):
    assert [int(r["label"]) for r in got] and sorted(int(r["label"]) for r in got) == sorted(
        r["label"] for r in want)
    want = {r["label"]: r for r in want}
    for row in got:
        expected = want[int(row["label"])]
        assert list(row) == list(expected)
        for name, value in row.items():
            assert float(value) == pytest.approx(float(expected[name]), rel=1e-6), name


@pytest.mark.parametrize("channels", [1, 3])
def test_block_wise_tables_equal_the_whole_image_tables(tmp_path, channels):
    labels = _awkward_labels()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 4000, (channels, *labels.shape)).astype(np.uint16)
    axes = "cyx" if channels > 1 else "yx"
    image_path = write_ome_zarr(tmp_path / "s.ome.zarr", pixels if channels > 1 else pixels[0],
                                axes=axes, chunks=(1, 64, 64)[-len(axes):])
    array = create_ome_zarr(tmp_path / "labels.zarr", labels.shape, labels.dtype,
                            chunks=(BLOCK, BLOCK))
    array[...] = labels
    plan = plan_blocks(labels.shape, BLOCK, 0, 0)
    written = write_slide_cells(array, plan, open_slide(image_path).source, source="s",
                                geojson=tmp_path / "s_cells.geojson",
                                csv_path=tmp_path / "s_cells.csv")

    image = np.moveaxis(pixels, 0, -1)
    rows, features = _whole_image_tables(labels, image if channels > 1 else image[..., 0], "s")
    assert written.cells == len(features) == 8
    collection = json.loads((tmp_path / "s_cells.geojson").read_text(encoding="utf-8"))
    assert collection["type"] == "FeatureCollection"
    got = _assert_same_features(collection["features"], features)
    assert got[42]["geometry"]["type"] == "MultiPolygon"
    assert len(got[123_456_789]["geometry"]["coordinates"]) == 2  # shell and hole
    _assert_same_rows(_read_csv(tmp_path / "s_cells.csv"), rows)


def test_cell_boxes_merge_over_the_cores_a_cell_crosses():
    labels = _awkward_labels()
    ids, boxes = cell_boxes(labels, plan_blocks(labels.shape, BLOCK, 0, 0))
    assert ids.tolist() == sorted(int(v) for v in np.unique(labels) if v)
    box = dict(zip(ids.tolist(), boxes.tolist(), strict=True))
    assert box[7_000_000_001] == [10, 14, 20, 200]
    assert box[42] == [100, 190, 5, 160]
    assert box[99] == [0, 6, 224, 230]


def test_memory_stays_near_one_region_on_a_large_label_image(tmp_path):
    side, block = 2048, 256
    labels = np.zeros((side, side), np.int32)
    centres = straddling_centres((side, side), block, 400, gap=20)
    for k, (cy, cx) in enumerate(centres, start=1):
        labels[max(0, cy - 6):cy + 6, max(0, cx - 6):cx + 6] = k * 1000
    array = create_ome_zarr(tmp_path / "labels.zarr", labels.shape, labels.dtype,
                            chunks=(block, block))
    array[...] = labels
    whole = labels.nbytes  # 16 MiB
    del labels
    plan = plan_blocks((side, side), block, 0, 0)
    tracemalloc.start()
    try:
        written = write_slide_cells(array, plan, None, csv_path=tmp_path / "c.csv",
                                    geojson=tmp_path / "c.geojson")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert written.cells == len(centres)
    assert len(_read_csv(tmp_path / "c.csv")) == len(centres)
    assert peak < whole / 4, f"peak {peak / 2**20:.1f} MiB for a {whole / 2**20:.0f} MiB image"


@pytest.fixture()
def disc_slide(tmp_path):
    shape = (384, 384)
    image = disc_image(shape, straddling_centres(shape, 128, 40, gap=22), radius=9)
    return image, write_slide(tmp_path / "d.ome.zarr", image, chunks=(128, 128))


def test_predict_slides_writes_the_tables_of_its_labels(tmp_path, disc_slide):
    image, path = disc_slide
    predictor = stand_in_predictor()
    batch = slides.predict_slides(predictor, [path], tmp_path / "out", block=128, margin=32,
                                  geojson=True, cells_csv=True)
    [result] = batch.slides
    assert result.extra["geojson"] == tmp_path / "out" / "d_cells.geojson"
    labels = zarr.open_array(str(result.labels / "0"), mode="r")[:]
    source = json.dumps({**predictor.source, "image": str(path.resolve())}, sort_keys=True)
    rows, features = _whole_image_tables(labels, image, source)
    got = json.loads(result.extra["geojson"].read_text(encoding="utf-8"))["features"]
    assert len(got) == result.cells == len(features) > 40
    _assert_same_features(got, features)
    _assert_same_rows(_read_csv(result.extra["csv"]), rows)


def test_a_table_is_not_replaced_without_overwrite(tmp_path, disc_slide):
    _, path = disc_slide
    out = tmp_path / "out"
    out.mkdir()
    table = out / "d_cells.csv"
    table.write_text("the user's edits\n", encoding="utf-8")
    batch = slides.predict_slides(stand_in_predictor(), [path], out, block=128, margin=32,
                                  cells_csv=True)
    [failure] = batch.failures
    assert str(table) in failure.error and "--overwrite" in failure.error
    assert table.read_text(encoding="utf-8") == "the user's edits\n"
    assert not (out / "d.zarr").exists()  # refused before any prediction


def test_resume_keeps_the_tables_and_writes_the_missing_ones(tmp_path, disc_slide):
    _, path = disc_slide
    predictor = stand_in_predictor()
    out = tmp_path / "out"
    first = slides.predict_slides(predictor, [path], out, block=128, margin=32, cells_csv=True)
    table = out / "d_cells.csv"
    assert len(_read_csv(table)) == first.slides[0].cells
    table.write_text("kept\n", encoding="utf-8")
    resumed = slides.predict_slides(predictor, [path], out, block=128, margin=32, resume=True,
                                    cells_csv=True, geojson=True)
    assert resumed.skipped == [path] and resumed.ok
    assert table.read_text(encoding="utf-8") == "kept\n"
    features = json.loads((out / "d_cells.geojson").read_text(encoding="utf-8"))["features"]
    assert len(features) == first.slides[0].cells


def test_tables_need_instances(tmp_path, disc_slide):
    _, path = disc_slide
    with pytest.raises(ConfigError, match="--geojson needs cell instances"):
        slides.predict_slides(stand_in_predictor(), [path], tmp_path / "out",
                              instances="none", geojson=True)
    assert not (tmp_path / "out").exists()
