"""End to end with tiny models: train -> threshold -> evaluate -> plots; a 2-row study."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest
import torch

from celltune.config import RunConfig, StudyConfig
from celltune.data.synthetic import write_dataset
from celltune.errors import RunError
from celltune.evaluation.evaluate import evaluate_run
from celltune.evaluation.metrics import confusion, dice
from celltune.inference.predict import Predictor
from celltune.io import read_image, read_label, to_binary
from celltune.rundir import RunDir
from celltune.workflows.run import run_pipeline
from celltune.workflows.study import run_study


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "synth"
    write_dataset(root, n=10, size=64, seed=5)
    return root


def tiny_config(root, **train) -> RunConfig:
    return RunConfig.model_validate({
        "name": "tiny",
        "data": {"root": str(root), "filter": "all", "val": 2, "test_fraction": 0.2,
                 "crop": 64, "samples_per_epoch": 8},
        "model": {"name": "unet", "options": {"tiny": True}},
        "train": {"epochs": 2, "batch_size": 4, "aug": "aug1", **train},
        "eval": {"bootstrap": 50},
    })


@pytest.fixture(scope="module")
def tiny_run(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    return run_pipeline(tiny_config(synth_root), out, progress=False)


def test_run_folder_has_every_artifact(tiny_run):
    run = tiny_run.run_dir
    for rel in ("config.yaml", "splits.json", "checkpoints/best.ckpt", "checkpoints/last.ckpt",
                "metrics.csv", "threshold.json", "eval/test/summary.json",
                "eval/test/per_image.csv", "plots/loss.png", "plots/threshold.png", "done.json"):
        assert (run / rel).is_file(), rel
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert all(math.isfinite(float(r["train_loss"])) for r in rows)
    assert all(0.0 <= float(r["val_dice"]) <= 1.0 for r in rows)


def test_threshold_json_matches_the_summary(tiny_run):
    run = tiny_run.run_dir
    thr = json.loads((run / "threshold.json").read_text())
    summary = json.loads((run / "eval/test/summary.json").read_text())
    assert summary["threshold"] == thr["best_threshold"] == tiny_run.threshold
    assert max(thr["dice"]) == pytest.approx(thr["best_dice"])
    assert 0.05 <= thr["best_threshold"] <= 0.95


def test_per_image_scores_recomputed_from_the_predictor(tiny_run):
    """The evaluation's numbers equal Dice computed directly from Predictor masks."""
    run = tiny_run.run_dir
    rows = {r["name"]: r for r in RunDir(run).read_per_image("test")}
    splits = json.loads((run / "splits.json").read_text())
    predictor = Predictor.from_run(run)
    for item in splits["test"]:
        image = read_image(item["image"])
        truth = to_binary(read_label(item["label"]))
        mask = predictor.predict(image).mask
        name = item["image"].rsplit("/", 1)[-1].rsplit(".", 1)[0]
        assert rows[name]["dice"] == pytest.approx(dice(confusion(mask, truth)), abs=1e-6)
    summary = json.loads((run / "eval/test/summary.json").read_text())
    assert summary["dice"] == pytest.approx(np.mean([r["dice"] for r in rows.values()]))
    low, high = summary["dice_ci95"]
    assert low <= summary["dice"] <= high
    assert "both empty" in summary["empty_rule"]


def test_existing_run_folder_is_not_overwritten(tiny_run, synth_root):
    with pytest.raises(RunError, match=r"--resume .* --overwrite"):
        run_pipeline(tiny_config(synth_root), tiny_run.run_dir, progress=False)


def test_resume_of_a_finished_run_does_not_retrain(tiny_run, synth_root):
    before = (tiny_run.run_dir / "checkpoints/best.ckpt").stat().st_mtime_ns
    again = run_pipeline(tiny_config(synth_root), tiny_run.run_dir, resume=True, progress=False)
    assert again.threshold == tiny_run.threshold
    assert (tiny_run.run_dir / "checkpoints/best.ckpt").stat().st_mtime_ns == before


def test_evaluate_on_another_root_with_the_runs_rules(tiny_run, tmp_path):
    other = tmp_path / "other"
    write_dataset(other, n=6, size=64, seed=9)
    summary = evaluate_run(tiny_run.run_dir, split="test", data_root=other, progress=False)
    assert summary["n_images"] >= 1
    assert summary["data_root"] == str(other)


def test_evaluate_retune_chooses_again_what_training_chose(tiny_run, tmp_path):
    """A run whose saved choices are damaged is told to retune; --retune then chooses on
    validation exactly what training chose (same network, same images) and scores with it."""
    from typer.testing import CliRunner

    from celltune.cli import app

    run = tmp_path / "copy"
    shutil.copytree(tiny_run.run_dir, run)
    names = ("threshold.json", "postprocess.json")
    chosen = {name: json.loads((run / name).read_text()) for name in names}
    (run / "postprocess.json").write_text("{damaged")
    (run / "threshold.json").write_text("[]")

    failed = CliRunner().invoke(app, ["evaluate", str(run)])
    assert isinstance(failed.exception, RunError)
    assert f"celltune evaluate {run} --retune" in str(failed.exception)

    retuned = CliRunner().invoke(app, ["evaluate", str(run), "--retune"])
    assert retuned.exit_code == 0, retuned.output
    assert {name: json.loads((run / name).read_text()) for name in names} == chosen
    summary = json.loads((run / "eval/test/summary.json").read_text())
    assert summary["threshold"] == chosen["threshold.json"]["best_threshold"]
    assert summary["instances"] == {**summary["instances"], **chosen["postprocess.json"]["best"]}


def test_two_class_head_uses_argmax(synth_root, tmp_path):
    cfg = tiny_config(synth_root)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"head": "two_class"})})
    result = run_pipeline(cfg, tmp_path / "two", progress=False)
    thr = json.loads((result.run_dir / "threshold.json").read_text())
    assert thr["best_threshold"] == 0.5 and "argmax" in thr["criterion"]


def test_training_is_reproducible(synth_root, tmp_path):
    a = run_pipeline(tiny_config(synth_root, epochs=1), tmp_path / "a", progress=False)
    b = run_pipeline(tiny_config(synth_root, epochs=1), tmp_path / "b", progress=False)
    ma = (a.run_dir / "metrics.csv").read_text().splitlines()
    mb = (b.run_dir / "metrics.csv").read_text().splitlines()
    # Every column but the wall-clock seconds is identical.
    strip = [",".join(line.split(",")[:-1]) for line in ma], [",".join(line.split(",")[:-1]) for line in mb]
    assert strip[0] == strip[1]
    assert a.summary["dice"] == b.summary["dice"]


def test_two_row_study_writes_the_report(synth_root, tmp_path):
    base = tiny_config(synth_root, epochs=1).model_dump(mode="json")
    study = StudyConfig.model_validate({
        "name": "tiny study",
        "defaults": base,
        "rows": [
            {"name": "unet", "model": {"name": "unet", "options": {"tiny": True}},
             "paper": {"dice": 0.77, "iou": 0.64, "threshold": 0.2}},
            {"name": "plain", "label": "plain U-Net",
             "model": {"name": "unet_plain_bn", "options": {"tiny": True}}},
        ],
    })
    out = tmp_path / "study"
    outcome = run_study(study, out, progress=False)
    assert [r.run_dir.name for r in outcome.results] == ["unet", "plain"]
    assert [r.label for r in outcome.report.results] == ["unet", "plain U-Net"]
    for rel in ("results.md", "results.csv", "report.html", "plots/masks.png",
                "plots/loss_curves.png", "plots/threshold_curves.png", "study.yaml"):
        assert (out / rel).is_file(), rel
    md = (out / "results.md").read_text()
    assert "plain U-Net" in md and "0.77" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3
    # A second run with resume skips both finished rows.
    stamps = [(out / n / "done.json").stat().st_mtime_ns for n in ("unet", "plain")]
    run_study(study, out, resume=True, progress=False)
    assert stamps == [(out / n / "done.json").stat().st_mtime_ns for n in ("unet", "plain")]


def test_unvalidated_last_epoch_is_validated_at_the_end(synth_root, tmp_path):
    cfg = tiny_config(synth_root, epochs=3, val_every=2)
    result = run_pipeline(cfg, tmp_path / "every2", progress=False)
    rows = list(csv.DictReader((result.run_dir / "metrics.csv").open()))
    val = [float(r["val_dice"]) for r in rows]
    assert math.isnan(val[0]) and not math.isnan(val[1])
    assert not math.isnan(val[2])  # epoch 3 validated after training ended


class _Sized:
    def __init__(self, shapes):
        self.shapes = shapes

    def __len__(self):
        return len(self.shapes)

    def load(self, i):
        return np.zeros((*self.shapes[i], 1), np.float32), None


def test_auto_validation_interval_follows_pixel_counts(synth_root):
    from celltune.training.fit import VALIDATION_SHARE, resolve_val_every

    cfg = tiny_config(synth_root, val_every="auto")  # crop 64
    train = _Sized([(64, 64)] * 100)  # 100 crops of 64² per epoch
    small_val = _Sized([(64, 64)] * 2)
    assert resolve_val_every(cfg, train, small_val) == 1
    # Ten 1000x1300 images: validation pixels are ~32x one epoch of crop pixels.
    big_val = _Sized([(1000, 1300)] * 10)
    expected = math.ceil(13_000_000 / (VALIDATION_SHARE * 3 * 100 * 64 * 64))
    assert resolve_val_every(cfg, train, big_val) == expected > 1
    fixed = tiny_config(synth_root, val_every=3)
    assert resolve_val_every(fixed, train, big_val) == 3


def test_large_validation_images_are_tiled_with_the_same_dice():
    from celltune.training.module import SegmentationModule, _dice

    module = SegmentationModule(
        model={"name": "unet_plain", "options": {"tiny": True}},
        train={"channels_last": False}, val_tile=32,
    ).eval()
    # A pointwise network makes tiled and whole-image probabilities identical, so the
    # tiled Dice must equal the Dice of the thresholded image exactly.
    net = torch.nn.Conv2d(1, 1, 1)
    net.weight.data.fill_(10.0)
    net.bias.data.fill_(-5.0)
    module.net = net
    image = torch.rand(1, 1, 96, 136, generator=torch.Generator().manual_seed(0))
    mask = (torch.rand(1, 1, 96, 136, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    module._validate_tiled(image, mask, [(90, 130)])
    expected = _dice(image[0, 0, :90, :130] > 0.5, mask[0, 0, :90, :130] > 0.5)
    assert module._val_dice.pop() == pytest.approx(expected, abs=1e-9)


@pytest.mark.slow
def test_compiled_training_leaves_a_checkpoint_that_loads_uncompiled(synth_root, tmp_path):
    from celltune.config import run_config_with_overrides

    assert run_config_with_overrides(None, {"train.compile": True}).train.compile is True
    result = run_pipeline(tiny_config(synth_root, epochs=1, compile=True), tmp_path / "c",
                          progress=False)
    state = torch.load(result.run_dir / "checkpoints/best.ckpt", map_location="cpu",
                       weights_only=False)["state_dict"]
    assert state and not any("_orig_mod" in key for key in state)
    predictor = Predictor.from_run(result.run_dir)
    image = read_image(json.loads((result.run_dir / "splits.json").read_text())["test"][0]["image"])
    assert predictor.predict(image).mask.shape == image.shape[:2]
