"""The instance step's parameters tuned on validation by F1 (evaluation/postprocess.py), and
their way through the run folder into evaluate and predict."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from tests.test_pipeline import synth_root, tiny_config  # noqa: F401 (fixture)

from celltune.data.samples import Sample
from celltune.errors import ConfigError
from celltune.evaluation.evaluate import (
    KeptProbabilities,
    choose_postprocess,
    choose_threshold,
    evaluate_run,
)
from celltune.evaluation.metrics import instance_scores
from celltune.evaluation.postprocess import (
    FILTERS,
    H_GRID,
    PostprocessSweep,
    apply_filter,
    cell_areas,
    default_params,
    grids,
    median_cell_area,
)
from celltune.inference.batch import predict_files
from celltune.inference.instances import label_instances, remove_small, typical_area
from celltune.inference.predict import Predictor
from celltune.rundir import RunDir
from celltune.viz.curves import postprocess_curve


def _discs(shape, centres, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = i
    return labels


def _merged(labels):
    """Every three cells (1-3, 4-6, ...) labelled as one: an under-split decoding whose cells
    overlap no true cell by IoU 0.5."""
    return ((labels + 2) // 3).astype(np.int32)


def test_the_sweep_picks_the_one_candidate_that_splits_the_cells():
    truth = _discs((64, 64), [(16, 12), (16, 28), (16, 44), (46, 12), (46, 28), (46, 44)], 8)
    candidates = [{"method": "watershed", "h": h} for h in (0.5, 1.0, 2.0, 4.0)]
    # Only h = 1 recovers the cells; the others merge touching pairs.
    sweep = PostprocessSweep(candidates, _sizes(0, 16), default_params(seeded=False))
    sweep.add(truth, lambda p: truth if p["h"] == 1.0 else _merged(truth))
    result = sweep.result(head="binary", parameter="h")
    assert result.best == {"method": "watershed", "h": 1.0, "min_size": 0, "min_fraction": 0.0}
    assert result.best_f1 == pytest.approx(1.0)
    assert result.default_f1 == pytest.approx(0.0)  # merged cells match none at IoU 0.5
    assert result.f1[2] == pytest.approx([0.0, 0.0])


def test_connected_components_can_win_and_keep_complete_parameters():
    truth = _discs((64, 64), [(20, 20), (44, 44)], 9)
    candidates = [{"method": "watershed", "h": 2.0}, {"method": "components"}]
    sweep = PostprocessSweep(candidates, FILTERS, default_params(seeded=False))
    # The watershed splits each cell in two; components keeps them whole.
    split = np.where(np.add.outer(np.zeros(64), np.arange(64)) < 20, truth, truth * 3)
    sweep.add(truth, lambda p: truth if p["method"] == "components" else split)
    result = sweep.result(head="binary", parameter="h")
    assert result.best["method"] == "components" and result.best_f1 == pytest.approx(1.0)
    import torch

    predictor = Predictor(torch.nn.Conv2d(1, 1, 1), device="cpu")
    assert predictor.with_options(instances=result.best).label(truth > 0).max() == 2


def test_the_sweep_picks_the_smallest_size_that_removes_fragments():
    truth = _discs((64, 64), [(20, 20), (44, 44)], 9)  # cells of ~250 px
    noisy = truth.copy()
    noisy[8:11, 50:53] = 3  # a 9-px fragment
    noisy[50:55, 6:11] = 4  # a 25-px fragment
    sweep = PostprocessSweep([{"method": "watershed", "h": 2.0}], _sizes(0, 16, 30, 60),
                             default_params(seeded=False))
    sweep.add(truth, lambda p: noisy)
    result = sweep.result(head="binary", parameter="h")
    assert result.best["min_size"] == 30  # 16 still keeps the 25-px fragment
    assert result.f1[0][0] == pytest.approx(2 * 2 / (2 * 2 + 2))
    assert result.best_f1 == pytest.approx(1.0)


def test_ties_keep_the_defaults_and_cells_are_counted_over_images():
    truth = _discs((40, 40), [(20, 20)], 8)
    candidates = [{"method": "watershed", "h": h} for h in (1.0, 2.0)]
    sweep = PostprocessSweep(candidates, _sizes(0, 16), default_params(seeded=False))
    sweep.add(truth, lambda p: truth)
    assert sweep.result(head="binary", parameter="h").best == default_params(seeded=False)
    # A second image only h = 1 gets right: h = 2 finds 1 of the 2 cells (F1 2/3 over the
    # cells, 0.5 as a mean of the images' F1) -> h = 1 wins.
    sweep.add(truth, lambda p: truth if p["h"] == 1.0 else np.zeros_like(truth))
    result = sweep.result(head="binary", parameter="h")
    assert result.best["h"] == 1.0 and result.n_images == 2
    assert result.f1[1][1] == pytest.approx(2 / 3)
    assert result.f1_mean[1][1] == pytest.approx(0.5)


def test_a_one_cell_image_does_not_outvote_a_crowded_one():
    """Image A: one cell, which only h = 2 finds. Image B: ten cells, which only h = 1
    separates (h = 2 merges them in threes). The mean of per-image F1 prefers h = 2
    (1.0 and 0.14 vs 0.0 and 1.0); over the 11 cells h = 1 finds 10 and h = 2 two."""
    lone = _discs((40, 40), [(20, 20)], 8)
    crowd = _discs((64, 160), [(16, 16 + 32 * k) for k in range(5)]
                   + [(48, 16 + 32 * k) for k in range(5)], 8)
    candidates = [{"method": "watershed", "h": h} for h in (1.0, 2.0)]
    sweep = PostprocessSweep(candidates, _sizes(0), default_params(seeded=False))
    sweep.add(lone, lambda p: lone if p["h"] == 2.0 else np.zeros_like(lone))
    sweep.add(crowd, lambda p: crowd if p["h"] == 1.0 else _merged(crowd))
    result = sweep.result(head="binary", parameter="h")
    assert result.f1_mean[1][0] > result.f1_mean[0][0]  # the mean would take h = 2
    assert result.best["h"] == 1.0
    assert result.best_f1 == pytest.approx(2 * 10 / (2 * 10 + 1))


def test_a_real_watershed_sweep_finds_an_h_that_splits_a_shallow_neck():
    # A cell of radius 12 and one of radius 7, centres 16 apart: the small one's distance
    # peak rises less than 2 px above the neck, so the default h = 2 does not split them;
    # a smaller h does.
    big, small = _discs((48, 80), [(24, 24)], 12), _discs((48, 80), [(24, 40)], 7)
    truth = np.where(big > 0, 1, np.where(small > 0, 2, 0)).astype(np.int32)
    mask = truth > 0
    assert label_instances(mask, h=2.0).max() == 1
    candidates = grids(seeded=False, area=median_cell_area([cell_areas(truth)]))
    sweep = PostprocessSweep(candidates, FILTERS, default_params(seeded=False))
    sweep.add(truth, lambda p: label_instances(mask, min_size=0, **{
        k: v for k, v in p.items() if k != "min_size"}))
    result = sweep.result(head="binary", parameter="h")
    assert result.best["h"] < 2.0
    chosen = apply_filter(label_instances(mask, min_size=0, h=result.best["h"]), result.best)
    assert instance_scores(truth, chosen)["f1"][0] == pytest.approx(1.0)


def _sizes(*pixels):
    return [{"min_size": p, "min_fraction": 0.0} for p in pixels]


def test_grids_follow_the_cell_size():
    candidates = grids(seeded=False, area=math.pi * 5**2)  # radius 5 px
    assert [c["h"] for c in candidates if "h" in c] == [h for h in H_GRID if h <= 5]
    assert candidates[-1] == {"method": "components"}
    big = grids(seeded=False, area=math.pi * 40**2)
    assert [c["h"] for c in big if "h" in c] == list(H_GRID)
    seeded = grids(seeded=True, area=math.nan)
    assert all(set(c) == {"method", "seed_threshold"} for c in seeded)


def test_typical_area_ignores_fragments():
    labels = _discs((80, 80), [(20, 20), (20, 60), (60, 20)], 8)  # ~200 px each
    plain = typical_area(labels)
    for k in range(4, 12):  # eight 1-px fragments
        labels[70, 2 * k] = k
    assert typical_area(labels) == plain == np.bincount(labels.ravel())[1]
    assert np.median(np.bincount(labels.ravel())[1:]) == 1  # the plain median collapses


def test_a_relative_size_filter_follows_the_cells_to_another_scale():
    # Validation: cells of radius 12 (~450 px) and 40-px fragments. Another image: the same
    # layout at half the scale (cells ~113 px, fragments 9 px).
    def scene(radius, frag):
        truth = _discs((128, 128), [(30, 30), (30, 90), (90, 60)], radius)
        found = truth.copy()
        found[110:110 + frag, 5:5 + frag] = 4
        found[5:5 + frag, 110:110 + frag] = 5
        return truth, found

    truth, found = scene(12, 6)
    filters = [*_sizes(0, 50, 200), {"min_size": 0, "min_fraction": 0.25}]
    sweep = PostprocessSweep([{"method": "watershed", "h": 2.0}], filters,
                             {"h": 2.0, "min_size": 0, "min_fraction": 0.0})
    sweep.add(truth, lambda p: found)
    f1 = sweep.result(head="binary", parameter="h").f1[0]
    assert f1[0] < 1.0 and f1[1] == f1[2] == f1[3] == pytest.approx(1.0)
    small_truth, small_found = scene(6, 3)
    # The absolute size that cleaned validation (200 px) deletes every small cell; the relative
    # one keeps them and still drops the fragments.
    assert instance_scores(small_truth, apply_filter(small_found, filters[2]))["f1"][0] == 0.0
    assert instance_scores(small_truth, apply_filter(small_found, filters[3]))["f1"][0] == 1.0


def test_remove_small_renumbers():
    labels = np.array([[1, 1, 0, 2], [1, 1, 0, 0], [0, 0, 3, 3]], np.int32)
    out = remove_small(labels, 2)
    assert out.max() == 2 and (out[0, 3] == 0) and set(np.unique(out)) == {0, 1, 2}


def test_predictor_instance_options_are_checked():
    import torch

    predictor = Predictor(torch.nn.Conv2d(1, 1, 1), device="cpu")
    assert predictor.instance_params() == default_params(seeded=False)
    other = predictor.with_options(instances={"h": 4.0, "min_size": 3, "min_fraction": 0.1})
    assert other.h == 4.0 and other.min_size == 3 and predictor.h != 4.0
    assert other.min_fraction == 0.1 and predictor.min_fraction == 0.0
    with pytest.raises(ConfigError, match="min_fraction"):
        predictor.with_options(instances={"min_fraction": 1.5})
    with pytest.raises(ConfigError, match="--instances 'blobs'"):
        predictor.with_options(instances={"method": "blobs"})
    with pytest.raises(ConfigError, match="valid ones are"):
        predictor.with_options(instances={"depth": 1})
    with pytest.raises(ConfigError, match="--min-size"):
        predictor.with_options(instances={"min_size": -1})


@pytest.fixture(scope="module")
def tuned_run(synth_root, tmp_path_factory):  # noqa: F811
    from celltune.workflows.run import run_pipeline

    out = tmp_path_factory.mktemp("runs") / "tuned"
    return run_pipeline(tiny_config(synth_root), out, progress=False)


def test_the_pipeline_tunes_and_every_stage_uses_the_tuned_step(tuned_run, tmp_path):
    run = RunDir(tuned_run.run_dir)
    sweep = json.loads(run.postprocess_path.read_text())
    assert sweep["parameter"] == "h" and sweep["n_images"] == 2
    assert max(max(row) for row in sweep["f1"]) == pytest.approx(sweep["best_f1"], abs=1e-6)
    assert run.postprocess_plot.is_file()
    predictor = Predictor.from_run(run)
    assert predictor.instance_params() == sweep["best"]
    summary = json.loads(run.summary_path("test").read_text())
    assert summary["instances"] == sweep["best"]
    for key in ("precision_iou50", "recall_iou50", "f1_iou50_median", "count_error_relative"):
        assert key in summary
    # predict: the run's step by default, the user's --min-size over it.
    image = run.read_splits().test[0].image
    predict_files(run.path, [str(image)], tmp_path / "a", progress=False)
    args = json.loads((tmp_path / "a" / "predict_args.json").read_text())
    assert args["instances"] == sweep["best"]
    predict_files(run.path, [str(image)], tmp_path / "b", min_size=7, progress=False)
    args = json.loads((tmp_path / "b" / "predict_args.json").read_text())
    assert args["instances"]["min_size"] == 7


def test_evaluate_with_components_overrides_the_method(tuned_run):
    summary = evaluate_run(tuned_run.run_dir, instance_method="components", progress=False,
                           save_masks=False)
    assert summary["instance_method"] == "components"
    assert summary["instances"]["method"] == "components"


def test_choose_postprocess_rewrites_the_sweep_and_the_figure_draws(tuned_run):
    run = RunDir(tuned_run.run_dir)
    result = choose_postprocess(run, progress=False)
    assert json.loads(run.postprocess_path.read_text())["best"] == result.best
    figure = postprocess_curve(json.loads(result.to_json()))
    assert figure.axes[0].get_ylabel().startswith("validation F1")


def test_the_instance_sweep_thresholds_the_kept_validation_probabilities(tuned_run, monkeypatch):
    run = RunDir(tuned_run.run_dir)
    predictor = Predictor.from_run(run)
    kept = KeptProbabilities()
    choose_threshold(run, predictor=predictor, progress=False, keep=kept)
    assert len(kept) == len(run.read_splits().val) == 2
    fresh = choose_postprocess(run, predictor=predictor, progress=False)

    def second_pass(*args, **kwargs):
        raise AssertionError("the validation images were predicted a second time")

    monkeypatch.setattr(Predictor, "predict", second_pass)
    reused = choose_postprocess(run, predictor=predictor, progress=False, kept=kept)
    assert reused.best == fresh.best and reused.f1 == fresh.f1
    # Nothing kept (over the limit): the sweep predicts again.
    nothing = KeptProbabilities(limit=0)
    choose_threshold(run, predictor=predictor, progress=False, keep=nothing)
    assert len(nothing) == 0 and not nothing.complete
    with pytest.raises(AssertionError, match="second time"):
        choose_postprocess(run, predictor=predictor, progress=False, kept=nothing)


def test_kept_probabilities_drop_everything_once_past_their_limit():
    a, b = Sample(Path("a.tif")), Sample(Path("b.tif"))
    kept = KeptProbabilities(limit=100)
    kept.keep(a, np.zeros((4, 4), np.float32))  # 64 bytes
    assert kept.get(a) is not None and kept.get(b) is None
    kept.keep(b, np.ones((4, 4), np.float32))  # 128 bytes in all
    assert not kept.complete and len(kept) == 0 and kept.get(a) is None
    kept.keep(a, np.zeros((1, 1), np.float32))
    assert kept.get(a) is None  # a partial set is never kept
