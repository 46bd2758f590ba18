"""QuPath GeoJSON outlines and per-cell measurements: round trips, conventions, predict flags."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import shapely  # a test dependency only (the [dev] extra): the writer does not need it
import tifffile
from shapely.geometry import shape
from skimage.draw import disk, ellipse
from typer.testing import CliRunner

from celltune.cli import app
from celltune.errors import ConfigError, RunError
from celltune.inference.batch import predict_files
from celltune.inference.measurements import (
    measure_cells,
    measurement_columns,
    measurements_csv,
)
from celltune.integrations.geojson import (
    cell_geometry,
    cells_to_features,
    feature_collection,
    write_geojson,
)
from test_predict import brightness_predictor, disc_area, write_images
from tiny_runs import make_run

# Cells of the zoo, by label.
DISC, ELLIPSE, BORDER_RECT, RING, LEFT, RIGHT, LINE, DIAGONAL, PIXEL, TWO_PIECES = range(1, 11)


def cell_zoo() -> np.ndarray:
    """64x80 labels: a disc, a rotated ellipse, a rectangle on the border, a ring with a hole,
    two touching cells, a 1-pixel line, a diagonal line, a single pixel in the corner and a
    cell in two pieces."""
    labels = np.zeros((64, 80), np.int32)
    labels[disk((12, 12), 6.5)] = DISC
    labels[ellipse(12, 35, 5, 9, shape=labels.shape, rotation=0.5)] = ELLIPSE
    labels[0:8, 70:80] = BORDER_RECT
    yy, xx = np.mgrid[:64, :80]
    d2 = (yy - 40) ** 2 + (xx - 14) ** 2
    labels[(d2 >= 16) & (d2 <= 64)] = RING
    labels[28:38, 30:36] = LEFT
    labels[28:38, 36:42] = RIGHT
    labels[58, 4:40] = LINE
    for i in range(8):
        labels[52 + i, 50 + i] = DIAGONAL  # pixels meet only at their corners
    labels[63, 79] = PIXEL
    labels[20:23, 60:63] = TWO_PIECES
    labels[30:33, 66:69] = TWO_PIECES
    return labels


def rasterise(geometry: dict, shape_hw: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre (c + 0.5, r + 0.5) lies inside the geometry (shapely, not our code)."""
    yy, xx = np.mgrid[: shape_hw[0], : shape_hw[1]]
    return shapely.contains_xy(shape(geometry), xx + 0.5, yy + 0.5)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


# --- GeoJSON geometry --------------------------------------------------------------------------


def test_the_zoo_is_as_built() -> None:
    labels = cell_zoo()
    assert set(np.unique(labels)) == set(range(11))
    assert (labels == RING).sum() > 100 and labels[40, 14] == 0  # the hole is background
    assert (labels == PIXEL).sum() == 1 and (labels == DIAGONAL).sum() == 8


def test_every_polygon_rasterises_back_to_its_cell() -> None:
    labels = cell_zoo()
    features = cells_to_features(labels)
    assert [f["properties"]["label"] for f in features] == list(range(1, 11))
    for feature in features:
        cell = labels == feature["properties"]["label"]
        back = rasterise(feature["geometry"], labels.shape)
        # The requirement is IoU >= 0.9; outlines on pixel edges give every cell back exactly,
        # the single pixel and the 1-pixel-wide lines included.
        assert iou(back, cell) >= 0.9
        np.testing.assert_array_equal(back, cell, err_msg=str(feature["properties"]))
        assert shape(feature["geometry"]).area == cell.sum()


def test_shapely_reads_every_geometry_and_it_is_valid() -> None:
    features = cells_to_features(cell_zoo())
    for feature in features:
        geometry = shape(feature["geometry"])
        assert geometry.is_valid, (feature["properties"]["label"], shapely.is_valid_reason(geometry))
    kinds = {f["properties"]["label"]: shape(f["geometry"]) for f in features}
    assert kinds[RING].geom_type == "Polygon" and len(kinds[RING].interiors) == 1
    assert kinds[TWO_PIECES].geom_type == "MultiPolygon" and len(kinds[TWO_PIECES].geoms) == 2
    # 8 pixels meeting only at corners: 8 squares, each touching the next at one point.
    assert kinds[DIAGONAL].geom_type == "MultiPolygon" and len(kinds[DIAGONAL].geoms) == 8
    for label in (DISC, ELLIPSE, BORDER_RECT, LEFT, RIGHT, LINE, PIXEL):
        assert kinds[label].geom_type == "Polygon" and not kinds[label].interiors, label
    assert kinds[LEFT].touches(kinds[RIGHT]) and kinds[LEFT].intersection(kinds[RIGHT]).length == 10


def test_rings_are_closed_and_consistently_oriented() -> None:
    for feature in cells_to_features(cell_zoo()):
        geometry = feature["geometry"]
        polygons = (
            geometry["coordinates"] if geometry["type"] == "MultiPolygon" else [geometry["coordinates"]]
        )
        for exterior, *holes in polygons:
            for ring in [exterior, *holes]:
                assert ring[0] == ring[-1] and len(ring) >= 5
            # Positive shoelace area in (x, y): anticlockwise with y up (RFC 7946).
            assert shapely.LinearRing(exterior).is_ccw
            assert not any(shapely.LinearRing(hole).is_ccw for hole in holes)


def test_origin_is_the_top_left_corner_with_x_the_column() -> None:
    labels = np.zeros((10, 12), np.int32)
    labels[0:3, 0] = 1  # an L at the top-left: 3 rows down column 0, then 5 columns along row 2
    labels[2, 0:5] = 1
    labels[9, 8:12] = 2  # a bar along the bottom-right edge
    one, two = cells_to_features(labels)
    assert shape(one["geometry"]).bounds == (0, 0, 5, 3)
    assert one["geometry"]["coordinates"][0][0] == [0, 0]
    assert shape(two["geometry"]).bounds == (8, 9, 12, 10)  # (min x, min y, max x, max y)
    assert shapely.contains_xy(shape(one["geometry"]), 4.5, 2.5)  # pixel (row 2, column 4)
    assert not shapely.contains_xy(shape(one["geometry"]), 2.5, 4.5)


def test_a_hole_pinched_open_at_a_corner_is_a_hole_touching_the_outline() -> None:
    labels = np.array(
        [
            [1, 1, 1, 0],
            [1, 0, 1, 0],  # the 0 inside meets the outside only at the corner (x=2, y=2)
            [1, 1, 0, 0],
        ],
        np.int32,
    )
    [feature] = cells_to_features(labels)
    polygon = shape(feature["geometry"])
    assert polygon.geom_type == "Polygon" and polygon.is_valid and len(polygon.interiors) == 1
    assert polygon.exterior.intersection(polygon.interiors[0]).equals(shapely.Point(2, 2))
    np.testing.assert_array_equal(rasterise(feature["geometry"], labels.shape), labels == 1)


def _rings(geometry: dict) -> list[list[list[int]]]:
    polygons = geometry["coordinates"]
    return [ring for polygon in (polygons if geometry["type"] == "MultiPolygon" else [polygons])
            for ring in polygon]


def test_random_label_maps_round_trip_exactly_and_validly() -> None:
    rng = np.random.default_rng(7)
    for _ in range(300):
        h, w = rng.integers(1, 12, size=2)
        labels = (rng.random((h, w)) < rng.random()) * rng.integers(1, 4, size=(h, w))
        for feature in cells_to_features(labels.astype(np.int32)):
            cell = labels == feature["properties"]["label"]
            geometry = shape(feature["geometry"])
            assert geometry.is_valid, (labels, feature["geometry"])
            np.testing.assert_array_equal(rasterise(feature["geometry"], (h, w)), cell)
            for ring in _rings(feature["geometry"]):
                assert len({tuple(p) for p in ring[:-1]}) == len(ring) - 1  # simple
                steps = np.diff(np.asarray(ring), axis=0)
                assert ((steps == 0).sum(axis=1) == 1).all()  # along pixel edges


def test_feature_collection_is_json_and_qupath_shaped() -> None:
    labels = cell_zoo()
    rows = measure_cells(labels, np.ones(labels.shape))
    collection = feature_collection(labels, rows, source="zoo.tif")
    assert json.loads(json.dumps(collection, allow_nan=False)) == collection
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 10
    ids = [f["id"] for f in collection["features"]]
    assert len(set(ids)) == 10 and ids == [f["id"] for f in feature_collection(labels, rows, source="zoo.tif")["features"]]
    assert ids != [f["id"] for f in feature_collection(labels, source="other.tif")["features"]]
    feature = collection["features"][RING - 1]
    assert feature["type"] == "Feature"
    properties = feature["properties"]
    assert properties["objectType"] == "detection" and properties["label"] == RING
    assert properties["measurements"]["label"] == RING
    assert properties["measurements"]["area"] == (labels == RING).sum()
    assert properties["measurements"]["mean_intensity"] == 1.0


def test_write_geojson_is_atomic_json(tmp_path: Path) -> None:
    path = write_geojson(tmp_path / "a" / "cells.geojson", cell_zoo(), source="x")
    assert json.loads(path.read_text()) == feature_collection(cell_zoo(), source="x")
    assert [p.name for p in path.parent.iterdir()] == ["cells.geojson"]  # no temp file left


def test_bad_labels_and_measurements_are_rejected() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        cells_to_features(np.array([[0, -1]]))
    with pytest.raises(ValueError, match="2-D integer"):
        cells_to_features(np.zeros((2, 2, 2), np.int32))
    with pytest.raises(ValueError, match="finite"):
        cells_to_features(np.ones((2, 2), np.int32), [{"label": 1, "area": math.nan}])
    with pytest.raises(ValueError, match="empty"):
        cell_geometry(np.zeros((3, 3), bool))
    assert feature_collection(np.zeros((5, 5), np.int32)) == {"type": "FeatureCollection", "features": []}


# --- measurements ------------------------------------------------------------------------------


def test_rectangle_measurements_match_hand_computed_values() -> None:
    labels = np.zeros((8, 12), np.int32)
    labels[2:6, 3:10] = 5  # 4 rows x 7 columns
    column = np.broadcast_to(np.arange(12, dtype=np.float32), (8, 12))
    rgb = np.stack([column, 2 * column, 3 * column], axis=-1)
    [row] = measure_cells(labels, rgb)
    assert row["label"] == 5 and row["area"] == 28
    # Mean pixel centre: columns 3..9 -> 6, rows 2..5 -> 3.5; centres sit at +0.5.
    assert (row["centroid_x"], row["centroid_y"]) == (6.5, 4.0)
    assert (row["mean_intensity_ch0"], row["mean_intensity_ch1"], row["mean_intensity_ch2"]) == (
        6.0, 12.0, 18.0)
    assert row["mean_intensity"] == 12.0  # the channels' average
    # Discrete second moments of a w x h block: (w^2 - 1) / 12 and (h^2 - 1) / 12.
    assert row["eccentricity"] == pytest.approx(math.sqrt(1 - 15 / 48), rel=1e-6)
    assert row["major_axis_length"] == pytest.approx(4 * math.sqrt(48 / 12), rel=1e-6)
    assert row["minor_axis_length"] == pytest.approx(4 * math.sqrt(15 / 12), rel=1e-6)
    [gray] = measure_cells(labels, column)
    assert gray["mean_intensity"] == 6.0 and "mean_intensity_ch0" not in gray

    text = measurements_csv([row], measurement_columns(3))
    [parsed] = list(csv.DictReader(text.splitlines()))
    assert list(parsed) == list(measurement_columns(3))
    assert (int(parsed["area"]), float(parsed["centroid_x"]), float(parsed["mean_intensity"])) == (
        28, 6.5, 12.0)


def test_measurements_of_tiny_cells_and_no_image() -> None:
    labels = cell_zoo()
    rows = {r["label"]: r for r in measure_cells(labels)}
    assert "mean_intensity" not in rows[PIXEL]
    assert (rows[PIXEL]["area"], rows[PIXEL]["centroid_x"], rows[PIXEL]["centroid_y"]) == (1, 79.5, 63.5)
    assert rows[PIXEL]["eccentricity"] == 0.0 and rows[LINE]["eccentricity"] == 1.0
    assert all(math.isfinite(v) for r in rows.values() for v in r.values())
    assert measure_cells(np.zeros((4, 4), np.int32)) == []
    with pytest.raises(ValueError, match="does not match"):
        measure_cells(labels, np.zeros((3, 3)))


def test_sparse_large_ids_give_the_cells_of_small_ones() -> None:
    """A whole slide's ids run to billions: outlines and measurements keep those ids and are
    otherwise those of the same cells numbered 1..n (no table sized by the largest id)."""
    small = cell_zoo()
    huge = np.where(small > 0, small.astype(np.int64) * 3_000_000_000 + 17, 0)
    image = np.arange(small.size, dtype=float).reshape(small.shape)
    rename = {k: k * 3_000_000_000 + 17 for k in range(1, TWO_PIECES + 1)}
    want = measure_cells(small, image)
    got = measure_cells(huge, image)
    assert [r["label"] for r in got] == [rename[r["label"]] for r in want]
    assert [{**r, "label": 0} for r in got] == [{**r, "label": 0} for r in want]
    features = cells_to_features(huge, got)
    assert [f["properties"]["label"] for f in features] == list(rename.values())
    assert [f["geometry"] for f in features] == [f["geometry"] for f in cells_to_features(small)]


# --- predict --geojson --csv --------------------------------------------------------------------


def test_predict_files_writes_cells_that_match_the_labels(tmp_path: Path) -> None:
    [path] = write_images(tmp_path / "in", ["cells.tif"])
    out = tmp_path / "out"
    result = predict_files(
        brightness_predictor(), [path], out, geojson=True, cells_csv=True, progress=False
    )
    assert result.ok
    labels = tifffile.imread(out / "cells_labels.tif")
    collection = json.loads((out / "cells_cells.geojson").read_text())
    with (out / "cells_cells.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert labels.max() == 3 and len(rows) == 3 and len(collection["features"]) == 3
    for row, feature in zip(rows, collection["features"], strict=True):
        cell = labels == int(row["label"])
        assert int(row["area"]) == disc_area() == cell.sum()
        assert float(row["mean_intensity"]) == 200.0  # the raw image: 200 inside each disc
        np.testing.assert_array_equal(rasterise(feature["geometry"], labels.shape), cell)
        assert feature["properties"]["measurements"]["area"] == disc_area()
    args = json.loads((out / "predict_args.json").read_text())
    assert args["geojson"] is True and args["cells_csv"] is True
    assert result.images[0].outputs["geojson"] == out / "cells_cells.geojson"


def test_existing_cell_files_are_not_overwritten_without_permission(tmp_path: Path) -> None:
    [path] = write_images(tmp_path / "in", ["cells.tif"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "cells_cells.csv").write_text("mine\n")
    with pytest.raises(RunError, match="--overwrite"):
        predict_files(brightness_predictor(), [path], out, cells_csv=True, progress=False)
    assert (out / "cells_cells.csv").read_text() == "mine\n"
    predict_files(brightness_predictor(), [path], out, cells_csv=True, overwrite=True,
                  progress=False)
    assert (out / "cells_cells.csv").read_text().startswith("label,area,")


def test_a_bad_image_is_skipped_and_the_others_get_their_cells(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    write_images(folder, ["a.tif"])
    (folder / "broken.tif").write_bytes(b"II*\x00 not a tiff")
    out = tmp_path / "out"
    result = predict_files(brightness_predictor(), [folder], out, geojson=True, cells_csv=True,
                           progress=False)
    assert len(result.images) == 1 and len(result.failures) == 1
    assert (out / "a_cells.geojson").exists() and (out / "a_cells.csv").exists()
    assert not list(out.glob("broken_*"))


@pytest.mark.parametrize("flags", [["--geojson"], ["--csv"], ["--geojson", "--csv"]])
def test_cell_outputs_without_instances_are_refused_naming_the_flag(
    tmp_path: Path, flags: list[str]
) -> None:
    [path] = write_images(tmp_path / "in", ["a.tif"])
    out = tmp_path / "out"
    argv = ["predict", str(tmp_path / "no-run"), str(path), "--out", str(out), "--instances",
            "none", *flags]
    res = CliRunner().invoke(app, argv)
    assert isinstance(res.exception, ConfigError), res.output
    message = str(res.exception)
    assert all(flag in message for flag in flags) and "--instances none" in message
    assert not out.exists()  # refused before anything was written


def test_cli_predict_geojson_and_csv_end_to_end(tmp_path: Path) -> None:
    run = make_run(tmp_path / "runs")
    [path] = write_images(tmp_path / "in", ["img.tif"])
    out = tmp_path / "preds"
    argv = ["predict", str(run), str(path), "--out", str(out), "--geojson", "--csv",
            "--no-progress", "--instances", "components", "--threshold", "0.6"]
    res = CliRunner().invoke(app, argv)
    assert res.exit_code == 0, res.output
    labels = tifffile.imread(out / "img_labels.tif")
    features = json.loads((out / "img_cells.geojson").read_text())["features"]
    with (out / "img_cells.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    cells = int(labels.max())
    assert cells > 1  # the untrained tiny network still finds several blobs at this threshold
    assert len(features) == len(rows) == cells == len(np.unique(labels)) - 1
    assert [int(r["label"]) for r in rows] == [f["properties"]["label"] for f in features]
    for feature in features:
        cell = labels == feature["properties"]["label"]
        assert shape(feature["geometry"]).is_valid
        assert iou(rasterise(feature["geometry"], labels.shape), cell) >= 0.9
