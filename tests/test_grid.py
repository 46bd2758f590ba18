"""Mask comparison grid: error colouring, image choice, layout, loading from a study folder."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from celltune.data.samples import Sample, Splits
from celltune.errors import RunError
from celltune.evaluation.evaluate import PER_IMAGE_COLUMNS
from celltune.io import write_png, write_tiff
from celltune.report.figures import study_mask_grid
from celltune.rundir import RunDir
from celltune.viz.grid import (
    ERROR_COLORS,
    GridRow,
    choose_grid_images,
    mask_grid,
    overlay_errors,
    shrink,
)

WHITE, MAGENTA, CYAN, BLACK = [255, 255, 255], [255, 0, 255], [0, 255, 255], [0, 0, 0]


def test_overlay_colours_each_outcome():
    pred = np.array([[1, 1, 0], [0, 0, 1]], dtype=bool)
    truth = np.array([[1, 0, 1], [0, 0, 1]], dtype=np.uint8)
    rgb = overlay_errors(pred, truth)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    assert rgb[0, 0].tolist() == WHITE  # predicted and true
    assert rgb[0, 1].tolist() == MAGENTA  # predicted, not true
    assert rgb[0, 2].tolist() == CYAN  # true, missed
    assert rgb[1, 0].tolist() == BLACK and rgb[1, 1].tolist() == BLACK
    assert rgb[1, 2].tolist() == WHITE
    assert ERROR_COLORS == {
        "TP": (255, 255, 255),
        "FP": (255, 0, 255),
        "FN": (0, 255, 255),
        "TN": (0, 0, 0),
    }


def test_overlay_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differs"):
        overlay_errors(np.zeros((2, 2)), np.zeros((2, 3)))


def _per_image(scores: dict[str, list[float]]) -> dict[str, list[dict]]:
    """model -> rows, from image -> one Dice per model."""
    models = ["a", "b"]
    return {m: [{"name": n, "dice": s[i]} for n, s in scores.items()] for i, m in enumerate(models)}


def test_choice_takes_hardest_median_and_easiest():
    # Mean Dice across the two models: img0 0.1, img1 0.2, ..., img8 0.9.
    scores = {f"img{i}": [0.1 * (i + 1) - 0.05, 0.1 * (i + 1) + 0.05] for i in range(9)}
    per_image = _per_image(dict(reversed(scores.items())))  # input order must not matter
    assert choose_grid_images(per_image, n=4) == ["img0", "img1", "img4", "img8"]
    assert choose_grid_images(per_image, n=3) == ["img0", "img4", "img8"]
    assert choose_grid_images(per_image, n=2) == ["img0", "img4"]
    assert choose_grid_images(per_image, n=1) == ["img0"]
    assert choose_grid_images(per_image, n=20) == [f"img{i}" for i in range(9)]
    assert choose_grid_images(per_image, n=0) == []


def test_choice_is_deterministic_and_breaks_ties_by_name():
    scores = {name: [0.5, 0.5] for name in ("d", "b", "a", "c", "e")}
    first = choose_grid_images(_per_image(scores), n=2)
    assert first == ["a", "c"]  # hardest by name, then the median position
    assert choose_grid_images(_per_image(dict(sorted(scores.items()))), n=2) == first


def test_choice_uses_only_images_every_model_scored():
    per_image = {
        "a": [{"name": "x", "dice": 0.0}, {"name": "y", "dice": 0.9}, {"name": "z", "dice": 0.5}],
        "b": [{"name": "y", "dice": 0.9}, {"name": "z", "dice": 0.4}],
    }
    assert choose_grid_images(per_image, n=1) == ["z"]


def test_mask_grid_layout_titles_and_panels():
    truth = np.zeros((8, 8), dtype=bool)
    truth[2:6, 2:6] = True
    pred = np.zeros_like(truth)
    pred[2:6, 2:4] = True  # half the cell: Dice 2*8/(8+16)
    rows = [
        GridRow("img0", np.linspace(0, 1, 64).reshape(8, 8), truth, {"m1": pred, "m2": truth}),
        GridRow("img1", np.zeros((8, 8, 3)), truth, {"m1": truth, "m2": pred}, {"m2": 0.1}),
    ]
    fig = mask_grid(rows, ["m1", "m2"])
    assert isinstance(fig, Figure)
    axes = fig.axes
    assert len(axes) == 2 * 4
    titles = [ax.get_title() for ax in axes]
    assert titles[:4] == ["img0", "ground truth", "m1\nDice 0.667", "m2\nDice 1.000"]
    assert titles[7] == "m2\nDice 0.100"  # a given Dice is shown as is
    shown = np.asarray(axes[2].images[0].get_array())
    assert shown[3, 3].tolist() == WHITE and shown[3, 5].tolist() == CYAN
    legend = fig.legends[0]
    assert [t.get_text()[:2] for t in legend.get_texts()] == ["TP", "FP", "FN", "TN"]


def test_large_images_are_downsampled_for_display():
    truth = np.zeros((1000, 600), dtype=bool)
    truth[:500] = True
    rows = [GridRow("big", np.random.default_rng(0).random((1000, 600)), truth, {"m": truth})]
    fig = mask_grid(rows, ["m"], max_side=200)
    for ax in fig.axes:
        assert np.asarray(ax.images[0].get_array()).shape[:2] == (200, 120)
    small = np.zeros((10, 10, 3), dtype=np.uint8)
    assert shrink(small, 200) is small


def _study(tmp_path, n=5):
    """Two rows over ``n`` 16x16 test images; row b misses more of image i as i grows."""
    samples = []
    for i in range(n):
        image, label = tmp_path / "data" / f"im{i}.tif", tmp_path / "data" / f"im{i}_label.tiff"
        write_tiff(image, np.full((16, 16), i * 100, dtype=np.uint16))
        lab = np.zeros((16, 16), dtype=np.int16)
        lab[4:12, 4:12] = 1
        write_tiff(label, lab)
        samples.append(Sample(image, label))
    for row, missed in (("a", lambda i: 0), ("b", lambda i: n - i)):
        run = tmp_path / "study" / row
        Splits(test=samples).save(run / "splits.json")
        rows = []
        for i in range(n):
            pred = np.zeros((16, 16), dtype=bool)
            pred[4:12, 4:12] = True
            pred[4, 4 : 4 + missed(i)] = False
            tp = int(pred.sum())
            rows.append(
                {
                    "name": f"im{i}",
                    "dice": 2 * tp / (tp + 64),
                    "iou": tp / 64,
                    "tp": tp,
                    "fp": 0,
                    "fn": 64 - tp,
                    "tn": 256 - 64,
                    "cells_true": 1,
                    "cells_pred": 1,
                    "f1_iou50": 1.0,
                    "f1_mean_50_90": 1.0,
                }
            )
            write_png(run / "eval/test/masks" / f"im{i}.png", pred.astype(np.uint8) * 255)
        RunDir(run).write_per_image("test", rows, PER_IMAGE_COLUMNS)
    return tmp_path / "study"


def test_study_grid_loads_the_hardest_image_from_disk(tmp_path):
    study = _study(tmp_path)
    fig = study_mask_grid(study, ["a", "b"], n=2, labels={"b": "model B"})
    titles = [ax.get_title() for ax in fig.axes]
    # im0 is hardest (b misses 5 of 64 pixels): Dice 2*59/123.
    assert titles[0] == "im0" and titles[3] == f"model B\nDice {2 * 59 / 123:.3f}"
    assert titles[2] == "a\nDice 1.000"
    assert titles[4] == "im2"  # the second image is the median one
    assert len(fig.axes) == 2 * 4
    shown = np.asarray(fig.axes[3].images[0].get_array())
    assert shown[4, 4].tolist() == CYAN and shown[5, 5].tolist() == WHITE


def test_study_grid_errors_name_the_file(tmp_path):
    study = _study(tmp_path, n=3)
    (study / "b/eval/test/per_image.csv").unlink()
    with pytest.raises(RunError, match=r"per_image\.csv"):
        study_mask_grid(study, ["a", "b"])
    study = _study(tmp_path / "second", n=3)
    write_png(study / "a/eval/test/masks/im0.png", np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(RunError, match=r"im0\.png.*differs"):
        study_mask_grid(study, ["a", "b"], n=3)
