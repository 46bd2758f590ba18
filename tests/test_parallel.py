"""Block-parallel slide prediction: same cells as one process, none cut at block borders."""

from __future__ import annotations

import os

import numpy as np
import pytest

zarr = pytest.importorskip("zarr", reason="slide prediction needs the [ome] extra (zarr)")

from celltune.errors import ConfigError, DataError  # noqa: E402
from celltune.inference import parallel, slides  # noqa: E402
from celltune.inference.parallel import global_ids, plan_blocks  # noqa: E402
from slide_helpers import (  # noqa: E402
    DiscAnswer,
    big_slide_centres,
    cut_discs,
    disc_image,
    same_partition,
    same_partition_chunked,
    stand_in_predictor,
    straddling_centres,
    write_disc_slide,
    write_slide,
)

SHAPE, BLOCK = (1024, 1024), 256
#: Side of the slide of test_a_big_slide_on_two_local_workers_matches_one_process.
BIG_SLIDE = int(os.environ.get("CELLTUNE_BIG_SLIDE", "16384"))


@pytest.fixture(scope="module")
def disc_slide(tmp_path_factory):
    image = disc_image(SHAPE, straddling_centres(SHAPE, BLOCK, 150), radius=9)
    return image, write_slide(tmp_path_factory.mktemp("slide") / "s.ome.zarr", image)


def _labels(group):
    return zarr.open_array(str(group / "0"), mode="r")[:]


def test_cores_tile_the_plane_once_and_windows_hold_their_cores():
    plan = plan_blocks((1000, 700), block=256, margin=40, context=10)
    hits = np.zeros((1000, 700), int)
    for b in plan.blocks():
        y0, y1, x0, x1 = b.core
        hits[y0:y1, x0:x1] += 1
        assert b.read[0] <= b.window[0] <= y0 and b.window[1] >= y1
    assert (hits == 1).all() and len(plan.blocks()) == 4 * 3


def test_two_windows_give_a_shared_cell_the_same_id():
    plan = plan_blocks((512, 512), block=256, margin=32, context=0)
    full = np.zeros((512, 512), np.int32)
    full[250:262, 100:110] = 1  # straddles the row edge at 256
    ids = []
    for window in (plan.blocks()[0].window, plan.blocks()[2].window):
        y0, y1, x0, x1 = window
        lut, owner = global_ids(full[y0:y1, x0:x1], plan, window)
        ids.append((lut[1], owner[1]))
    assert ids[0] == ids[1] and ids[0][1] == 0


@pytest.mark.parametrize("method", ["components", "watershed"])
def test_blocks_give_the_cells_of_one_process_and_cut_none(tmp_path, disc_slide, method):
    image, path = disc_slide
    predictor = stand_in_predictor(method)
    reference = predictor.predict_instances(image)
    result = slides.predict_slide(predictor, path, tmp_path / "out.zarr", block=BLOCK,
                                  margin=32, context=16)
    labels = _labels(result.labels)
    if method == "components":
        assert same_partition(reference, labels)
    else:  # the watershed's flooding order may break a tie on a contact line differently
        assert np.array_equal(reference > 0, labels > 0)
        ious = np.array(_matched_iou(reference, labels))
        assert ious.min() > 0.9 and (ious < 1).mean() < 0.05
    assert result.cells == int(reference.max()) == len(np.unique(labels)) - 1
    assert result.blocks == 16


def test_threads_match_one_process(tmp_path, disc_slide):
    _, path = disc_slide
    predictor = stand_in_predictor()
    one = slides.predict_slide(predictor, path, tmp_path / "a.zarr", block=BLOCK, margin=32)
    two = slides.predict_slide(predictor, path, tmp_path / "b.zarr", block=BLOCK, margin=32,
                               workers=2)
    np.testing.assert_array_equal(_labels(one.labels), _labels(two.labels))


def _die_after_five_blocks(monkeypatch) -> None:
    """Make the sixth block raise KeyboardInterrupt (a killed call), saving progress after
    every block."""
    real, calls = parallel.run_block, []

    def dies_after_five(pred, job, block):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(block.index)
        return real(pred, job, block)

    monkeypatch.setattr(parallel, "run_block", dies_after_five)
    monkeypatch.setattr(slides, "_SAVE_EVERY", 0.0)


def test_a_killed_slide_leaves_no_labels_and_resume_runs_only_the_rest(
    tmp_path, disc_slide, monkeypatch
):
    image, path = disc_slide
    predictor = stand_in_predictor()
    real = parallel.run_block
    _die_after_five_blocks(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        slides.predict_slide(predictor, path, tmp_path / "o.zarr", block=BLOCK, margin=32)
    assert not (tmp_path / "o.zarr" / "labels" / "cells").exists()
    monkeypatch.setattr(parallel, "run_block", real)
    ran = []
    result = slides.predict_slide(predictor, path, tmp_path / "o.zarr", block=BLOCK, margin=32,
                                  resume=True, on_block=lambda d, t: ran.append(d))
    assert result.reused_blocks == 5 and ran[0] == 5
    assert same_partition(predictor.predict_instances(image), _labels(result.labels))


def test_a_batch_reports_the_bad_slides_and_finishes_the_others(tmp_path, disc_slide):
    _, good = disc_slide
    plain = tmp_path / "plain.zarr"
    zarr.open_group(str(plain), mode="w").create_array("0", shape=(8, 8), dtype="u1")
    broken = write_slide(tmp_path / "broken.ome.zarr", np.ones((512, 512), np.uint16))
    (broken / "0" / "1" / "0").write_bytes(b"garbage")
    batch = slides.predict_slides(stand_in_predictor(), [plain, broken, good], tmp_path / "out",
                                  block=BLOCK, margin=32)
    assert [r.path for r in batch.slides] == [good]
    errors = {f.path: f.error for f in batch.failures}
    assert "no NGFF 'multiscales'" in errors[str(plain)]
    assert f"{broken}: cannot read rows" in errors[str(broken)]
    assert not (tmp_path / "out" / "broken.zarr" / "labels" / "cells").exists()
    again = slides.predict_slides(stand_in_predictor(), [good], tmp_path / "out", resume=True)
    assert again.skipped == [good] and again.ok


def test_a_missing_pixel_size_is_an_error_when_the_run_records_one(tmp_path):
    path = write_slide(tmp_path / "n.ome.zarr", np.ones((64, 64), np.uint16), pixel_size=None)
    predictor = stand_in_predictor(pixel_size=0.5)
    with pytest.raises(DataError, match=r"n\.ome\.zarr: has no physical pixel size.*--pixel-size"):
        slides.predict_slide(predictor, path, tmp_path / "o.zarr")
    result = slides.predict_slide(predictor, path, tmp_path / "o.zarr", pixel_size=0.5)
    assert result.pixel_size == 0.5


def _matched_iou(reference: np.ndarray, other: np.ndarray) -> list[float]:
    ious = []
    for cell in range(1, int(reference.max()) + 1):
        inside = reference == cell
        ids, counts = np.unique(other[inside], return_counts=True)
        best = ids[np.argmax(counts)]
        if best == 0:
            ious.append(0.0)
            continue
        match = other == best
        ious.append((inside & match).sum() / (inside | match).sum())
    return ious


def test_a_2x_coarser_image_with_its_pixel_size_gives_the_original_cells(tmp_path):
    image = disc_image((512, 512), straddling_centres((512, 512), 256, 40, seed=3, gap=24), 10)
    predictor = stand_in_predictor("watershed", pixel_size=0.5)
    original = predictor.at_pixel_size(0.5).predict_instances(image)
    coarse = image.reshape(256, 2, 256, 2).mean(axis=(1, 3))
    scaled = predictor.at_pixel_size(1.0)
    assert scaled.resize == 2.0 and scaled.min_size == 1 and scaled.h == pytest.approx(1.0)
    back = np.repeat(np.repeat(scaled.predict_instances(coarse), 2, 0), 2, 1)
    ious = _matched_iou(original, back)
    assert len(ious) == original.max() > 30 and min(ious) >= 0.8


@pytest.mark.slow
def test_a_two_worker_local_cluster_matches_one_process(tmp_path):
    pytest.importorskip("distributed", reason="the local cluster needs dask's distributed")
    from celltune.inference.predict import Predictor
    from tiny_runs import make_run

    run = make_run(tmp_path)
    image = disc_image((768, 768), straddling_centres((768, 768), 256, 60), radius=9)
    path = write_slide(tmp_path / "s.ome.zarr", image)
    predictor = Predictor.from_run(run, device="cpu")
    one = slides.predict_slides(predictor, [path], tmp_path / "one", block=256, margin=32)
    two = slides.predict_slides(predictor, [path], tmp_path / "two", block=256, margin=32,
                                workers=2)
    assert one.ok and two.ok
    a, b = _labels(one.slides[0].labels), _labels(two.slides[0].labels)
    assert same_partition(a, b) or (a != b).mean() < 1e-3
    assert two.slides[0].peak_rss_kib > 0


def test_cli_predicts_an_ome_zarr_and_an_ome_tiff(tmp_path):
    from typer.testing import CliRunner

    from celltune.cli import app
    from celltune.ome import open_slide, write_ome_tiff
    from tiny_runs import make_run

    run = make_run(tmp_path)
    image = disc_image((300, 280), straddling_centres((300, 280), 128, 10), radius=8)
    write_slide(tmp_path / "a.ome.zarr", image)
    write_ome_tiff(tmp_path / "b.ome.tif", image, pixel_size=0.5)
    args = ["predict", str(run), str(tmp_path / "a.ome.zarr"), str(tmp_path / "b.ome.tif"),
            "--out", str(tmp_path / "out"), "--block", "128", "--margin", "24", "--save-prob",
            "--no-progress", "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Predicted 2 of 2 slide(s)" in result.output
    for stem in ("a", "b"):
        assert (tmp_path / "out" / f"{stem}.zarr" / "labels" / "cells" / "0").exists()
        assert open_slide(tmp_path / "out" / f"{stem}.zarr" / "probability").shape == (300, 280)
    labels_tif = open_slide(tmp_path / "out" / "b_labels.ome.tif")
    assert labels_tif.pixel_size == pytest.approx(0.5) and labels_tif.shape_yx == (300, 280)
    zarr_labels = _labels(tmp_path / "out" / "b.zarr" / "labels" / "cells")
    np.testing.assert_array_equal(labels_tif.read()[..., 0], zarr_labels)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 1 and "--overwrite" in again.output


# --- the run's options on slides: as for one image --------------------------------------------


def _option_image() -> np.ndarray:
    """Bright discs on block edges, and inside blocks a dim disc (normalised ~0.45: kept only
    under a low threshold), a small disc (area ~49: removed by a size filter) or two touching
    discs (one cell as components, two by the watershed)."""
    bright = straddling_centres(SHAPE, BLOCK, 0)
    dim, small = [], []
    for i in range(4):
        for j in range(4):
            cy, cx = 128 + 256 * i, 128 + 256 * j
            kind = (i + j) % 3
            if kind == 0:
                dim.append((cy, cx))
            elif kind == 1:
                small.append((cy, cx))
            else:
                bright += [(cy, cx - 7), (cy, cx + 7)]
    bright += [(512, 163), (512, 177)]  # a touching pair cut by a block edge
    return np.maximum.reduce([disc_image(SHAPE, bright, 9), disc_image(SHAPE, dim, 9, 505),
                              disc_image(SHAPE, small, 4)])


@pytest.fixture(scope="module")
def option_slide(tmp_path_factory):
    image = _option_image()
    return image, write_slide(tmp_path_factory.mktemp("options") / "o.ome.zarr", image)


def _same_cells(reference: np.ndarray, labels: np.ndarray, exact: bool) -> bool:
    """Same partition; the watershed may break a tie on a contact line differently."""
    if exact:
        return same_partition(reference, labels)
    ious = np.array(_matched_iou(reference, labels))
    return (np.array_equal(reference > 0, labels > 0) and ious.min() > 0.9
            and len(np.unique(labels)) - 1 == int(reference.max()))


@pytest.mark.parametrize("option", ["threshold", "instances", "min_size", "min_fraction"])
def test_the_run_options_change_a_slide_as_they_change_one_image(tmp_path, option_slide,
                                                                  option):
    image, path = option_slide
    base = stand_in_predictor("components")
    chosen = {"threshold": {"threshold": 0.05}, "instances": {"instances": "watershed"},
              "min_size": {"min_size": 100}, "min_fraction": {}}[option]
    if option == "min_fraction":  # the run's tuned relative size filter
        base = base.with_options(instances={"min_fraction": 0.5})
    same = base.with_options(
        threshold=chosen.get("threshold"),
        instances={"method": chosen.get("instances"), "min_size": chosen.get("min_size")})
    reference = same.predict_instances(image)
    batch = slides.predict_slides(base, [path], tmp_path / "out", block=BLOCK, margin=32,
                                  **chosen)
    labels = _labels(batch.slides[0].labels)
    assert _same_cells(reference, labels, exact=option != "instances")
    assert batch.slides[0].cells == int(reference.max())
    default = stand_in_predictor("components").predict_instances(image)
    assert int(reference.max()) != int(default.max())  # the option matters on this image


def test_instances_none_writes_the_mask_of_one_image(tmp_path, option_slide):
    image, path = option_slide
    predictor = stand_in_predictor()
    batch = slides.predict_slides(predictor, [path], tmp_path / "out", block=BLOCK, margin=32,
                                  instances="none", threshold=0.05)
    [result] = batch.slides
    assert result.cells is None and result.labels.name == "mask"
    mask = _labels(result.labels)
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, predictor.with_options(threshold=0.05).predict(image).mask)
    assert not (tmp_path / "out" / "o.zarr" / "labels" / "cells").exists()
    with pytest.raises(ConfigError, match="--instances 'blobs'"):
        slides.predict_slides(predictor, [path], tmp_path / "out", instances="blobs")


def test_tta_tiling_and_threshold_reach_every_block(tmp_path, option_slide, monkeypatch):
    _, path = option_slide
    real, seen = parallel.run_block, []

    def spy(pred, job, block):
        seen.append((pred.tta, pred.tile, pred.threshold, pred.instance_method, pred.min_size))
        return real(pred, job, block)

    monkeypatch.setattr(parallel, "run_block", spy)
    slides.predict_slides(stand_in_predictor(), [path], tmp_path / "out", block=BLOCK,
                          margin=32, tta=True, tile=128, threshold=0.3,
                          instances="watershed", min_size=7)
    assert set(seen) == {(True, 128, 0.3, "watershed", 7)} and len(seen) == 16


def test_resuming_with_another_threshold_redoes_every_block(tmp_path, option_slide,
                                                           monkeypatch):
    image, path = option_slide
    real = parallel.run_block
    _die_after_five_blocks(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        slides.predict_slides(stand_in_predictor(), [path], tmp_path / "out", block=BLOCK,
                              margin=32)
    monkeypatch.setattr(parallel, "run_block", real)
    batch = slides.predict_slides(stand_in_predictor(), [path], tmp_path / "out", block=BLOCK,
                                  margin=32, threshold=0.05, resume=True)
    [result] = batch.slides
    assert result.reused_blocks == 0
    reference = stand_in_predictor().with_options(threshold=0.05).predict_instances(image)
    assert same_partition(reference, _labels(result.labels))


def test_a_slide_interrupted_in_its_relative_size_filter_resumes_it(tmp_path, option_slide,
                                                                       monkeypatch):
    image, path = option_slide
    predictor = stand_in_predictor().with_options(instances={"min_fraction": 0.5})
    real = parallel.drop_cells

    def dies(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(slides, "drop_cells", dies)
    with pytest.raises(KeyboardInterrupt):
        slides.predict_slides(predictor, [path], tmp_path / "out", block=BLOCK, margin=32)
    monkeypatch.setattr(slides, "drop_cells", real)
    batch = slides.predict_slides(predictor, [path], tmp_path / "out", block=BLOCK, margin=32,
                                  resume=True)
    [result] = batch.slides
    assert result.reused_blocks == 16
    reference = predictor.predict_instances(image)
    assert same_partition(reference, _labels(result.labels))
    assert result.cells == int(reference.max())


def test_cli_forwards_instances_and_threshold_to_slides(tmp_path):
    from typer.testing import CliRunner

    from celltune.cli import app
    from tiny_runs import make_run

    run = make_run(tmp_path)
    image = disc_image((200, 200), straddling_centres((200, 200), 128, 4), radius=8)
    write_slide(tmp_path / "a.ome.zarr", image)
    args = ["predict", str(run), str(tmp_path / "a.ome.zarr"), "--out", str(tmp_path / "out"),
            "--block", "256", "--margin", "24", "--no-progress", "--device", "cpu",
            "--instances", "none", "--threshold", "0.3", "--tta"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "a.ome.zarr: mask in" in result.output
    mask = _labels(tmp_path / "out" / "a.zarr" / "labels" / "mask")
    from celltune.inference.predict import Predictor

    predictor = Predictor.from_run(run, device="cpu").with_options(threshold=0.3, tta=True)
    slide = slides.open_slide(tmp_path / "a.ome.zarr")
    expected = predictor.with_normalization(slides.overview_bounds(slide, predictor))
    # One block covers the slide, so the block's tiles are the whole image's tiles.
    np.testing.assert_array_equal(mask, expected.predict(image).mask)


def test_a_local_cluster_leaves_this_process_environment_alone(monkeypatch):
    pytest.importorskip("distributed", reason="the local cluster needs dask's distributed")
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_"):
        monkeypatch.delenv(key, raising=False)
    before = dict(os.environ)
    with parallel.dask_client(workers=2) as client:
        assert client is not None and dict(os.environ) == before
        # The workers keep the single-thread settings dask gives them.
        assert set(client.run(lambda: os.environ.get("OMP_NUM_THREADS")).values()) == {"1"}
    assert dict(os.environ) == before


def test_cli_writes_a_slides_geojson_and_csv(tmp_path):
    import csv
    import json

    from typer.testing import CliRunner

    from celltune.cli import app
    from tiny_runs import make_run

    run = make_run(tmp_path)
    write_slide(tmp_path / "a.ome.zarr", disc_image((96, 96), [(48, 48)], radius=8))
    args = ["predict", str(run), str(tmp_path / "a.ome.zarr"), "--out", str(tmp_path / "out"),
            "--no-progress", "--device", "cpu", "--csv", "--geojson"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    labels = _labels(tmp_path / "out" / "a.zarr" / "labels" / "cells")
    cells = len(np.unique(labels)) - 1
    assert cells > 0 and f"{cells} cells" in result.output
    assert "a_cells.geojson" in result.output and "a_cells.csv" in result.output
    with open(tmp_path / "out" / "a_cells.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(int(r["label"]) for r in rows) == sorted(int(v) for v in np.unique(labels)[1:])
    assert sum(int(r["area"]) for r in rows) == int(np.count_nonzero(labels))
    geo = json.loads((tmp_path / "out" / "a_cells.geojson").read_text(encoding="utf-8"))
    assert len(geo["features"]) == cells


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_a_big_slide_on_two_local_workers_matches_one_process(tmp_path):
    """The issue's must-show: a 16384² OME-Zarr (``CELLTUNE_BIG_SLIDE`` pixels a side) of
    58,305 discs, 705 of them cut by block edges or on corners, written chunk by chunk, is
    predicted by a local Dask cluster of 2 worker processes (labels written into the slide,
    ``--in-place``) and by this process alone (into another Zarr): the same cells (ids may
    differ), every disc exactly one cell, none cut at a block border, peak RSS per worker
    under 2 GiB, and ome-zarr's reader finds the labels beside the image with their NGFF
    ``image-label`` metadata. Nothing holds more than a block's window or a 1024² chunk.

    The network is the tiny run's U-Net (``tiny_runs.make_run``) run at its full cost, with
    a pixelwise answer (:class:`~slide_helpers.DiscAnswer`); block 1024, margin 128, tile 512.

    Time on the shared 2-core VM at 4096² (16 blocks, 3633 discs), each phase measured while
    nothing else ran: one process 23 s, 2 workers 25 s (plus ~5 s to start the cluster);
    writing the slide 3 s and the checks ~13 s (measured under load, so less). Peak RSS
    988 MiB per worker, 1.2 GiB for this process with pytest. 16384² has 16x the pixels,
    blocks and discs, so expect ~6 + ~7 + ~4 min, about 17-20 min on a quiet VM and far more
    beside other jobs (run with ``nice``, one 4096² run took 9 min). Run it with:
    ``OMP_NUM_THREADS=1 PYTHONPATH=src python -m pytest -m slow -s
    tests/test_parallel.py -k big_slide`` (``CELLTUNE_BIG_SLIDE=4096`` for a quick check).
    """
    pytest.importorskip("distributed", reason="the local cluster needs dask's distributed")
    reader = pytest.importorskip("ome_zarr.reader", reason="needs ome-zarr to check its reader")
    from ome_zarr.io import parse_url

    from celltune.inference.predict import Predictor
    from celltune.ome import ngff_attrs
    from tiny_runs import make_run

    size, block, radius = BIG_SLIDE, 1024, 9
    tiny = Predictor.from_run(make_run(tmp_path), device="cpu")
    predictor = Predictor(DiscAnswer(tiny.model), head="binary", tile=512, batch_size=4,
                          device="cpu", instances={"method": "watershed", "min_size": 16})
    edges, centres = big_slide_centres(size, block)
    path = write_disc_slide(tmp_path / "s.ome.zarr", size, centres, radius)

    one = slides.predict_slides(predictor, [path], tmp_path / "one", block=block)
    two = slides.predict_slides(predictor, [path], tmp_path / "two", block=block, workers=2,
                                in_place=True)
    assert one.ok and two.ok, (one.failures, two.failures)
    a, b = one.slides[0], two.slides[0]
    print(f"\n{size}²: one process {a.seconds:.0f} s, peak RSS {a.peak_rss_kib / 2**10:.0f} MiB "
          f"(with pytest); 2 workers {b.seconds:.0f} s, peak RSS per worker "
          f"{b.peak_rss_kib / 2**10:.0f} MiB; {b.cells} cells, {b.blocks} blocks")
    assert a.cells == b.cells == len(centres) and b.blocks == (size // block) ** 2
    labels_one, labels_two = _labels_array(a.labels), _labels_array(b.labels)
    assert same_partition_chunked(labels_one, labels_two, block)
    assert cut_discs(labels_two, edges, radius, block) == []
    assert 0 < b.peak_rss_kib < 2 * 2**20

    nodes = list(reader.Reader(parse_url(str(path)))())
    [label] = [n for n in nodes if any(isinstance(s, reader.Label) for s in n.specs)]
    assert label.data[0].shape == (size, size) and any(
        isinstance(s, reader.Multiscales) for s in nodes[0].specs)
    np.testing.assert_array_equal(np.asarray(label.data[0][:block, :block]),
                                  labels_two[:block, :block])
    meta, version = ngff_attrs(dict(zarr.open_group(str(b.labels), mode="r").attrs))
    assert version == "0.4" and meta["image-label"]["source"]["image"] == "../../"
    scale = meta["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale == pytest.approx([0.5, 0.5])


def _labels_array(group):
    return zarr.open_array(str(group / "0"), mode="r")


def test_resume_keeps_a_finished_slide_only_when_its_settings_match(tmp_path, option_slide):
    image, path = option_slide
    out = tmp_path / "out"
    first = slides.predict_slides(stand_in_predictor(), [path], out, block=BLOCK, margin=32)
    [done] = first.slides
    before = _labels(done.labels).copy()
    again = slides.predict_slides(stand_in_predictor(), [path], out, block=BLOCK, margin=32,
                                  resume=True)
    assert again.skipped == [path] and not again.slides and again.ok
    other = slides.predict_slides(stand_in_predictor(), [path], out, block=BLOCK, margin=32,
                                  threshold=0.05, resume=True)
    [failure] = other.failures
    assert "made with other settings" in failure.error and "--overwrite" in failure.error
    assert np.array_equal(_labels(done.labels), before)  # nothing lost
    redone = slides.predict_slides(stand_in_predictor(), [path], out, block=BLOCK, margin=32,
                                   threshold=0.05, overwrite=True)
    reference = stand_in_predictor().with_options(threshold=0.05).predict_instances(image)
    assert same_partition(reference, _labels(redone.slides[0].labels))
    # The redone labels record the new settings: resuming with them skips the slide.
    assert slides.predict_slides(stand_in_predictor(), [path], out, block=BLOCK, margin=32,
                                 threshold=0.05, resume=True).skipped == [path]
