"""Settings derived from the dataset fingerprint: each rule, derive_config, and the wiring into
training (config.yaml records the values and reasons; a png folder trains without --filter)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from celltune.cli import app
from celltune.config import (
    DataConfig,
    RunConfig,
    load_study_config,
    packaged_config,
    run_config_with_overrides,
)
from celltune.data import fingerprint as fpmod
from celltune.data.derive import (
    crop_size,
    data_filter,
    default_val_count,
    derive_all,
    derive_config,
    derive_network,
    foreground_sampling,
    input_channels,
    rescale,
    training_epochs,
    unset_fields,
    validation_count,
)
from celltune.data.fingerprint import Fingerprint
from celltune.data.neurips import make_splits, training_images
from celltune.data.synthetic import write_dataset
from celltune.errors import DataError
from celltune.io import write_png
from celltune.models.build import build_network
from celltune.rundir import RunDir
from celltune.training.fit import derive_settings, fit


def fingerprint(**changes) -> Fingerprint:
    """A 40-image gray set of 512x640 images with 20 px objects covering 30% of the pixels."""
    values = {
        "images": 40, "sampled": 40, "height": (512, 512.0, 512), "width": (640, 640.0, 640),
        "dtypes": {"uint16": 40}, "channels": {"1": 40}, "colour_images": 0,
        "intensity": {"p1": 100.0, "p50": 400.0, "p99.8": 3000.0}, "objects": 2000,
        "object_diameter": 20.0, "object_area": 314.0, "objects_per_image": 50.0,
        "foreground_fraction": 0.3, "touching_share": 0.2, "groups": 40,
    }
    return Fingerprint(**{**values, **changes})


# --- the rules, one by one ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("images", "count"),
    [(1, 1), (2, 1), (3, 2), (12, 2), (21, 3), (40, 6), (36, 5), (100, 15), (491, 20)],
)
def test_validation_is_about_15_percent_between_2_and_20(images, count):
    choice = validation_count(fingerprint(images=images))
    assert choice.value == count == default_val_count(images)
    assert f"{count} of {images} images" in choice.reason
    if images > 1:
        assert images - count >= 1  # never leaves training empty


def test_a_40_image_set_holds_out_at_most_8():
    assert max(validation_count(fingerprint(images=n)).value for n in range(1, 41)) <= 8


def test_user_values_win():
    fp = fingerprint(colour_images=40, foreground_fraction=0.01, object_diameter=200.0)
    assert validation_count(fp, 4).value == 4 and validation_count(fp, 0.3).value == 0.3
    assert data_filter("study").value == "study"
    assert input_channels(fp, 1).value == 1
    assert crop_size(fp, 96).value == 96
    assert foreground_sampling(fp, 0.0).value == 0.0
    assert validation_count(fp, 4).reason == "given"


def test_filter_is_all_unless_asked():
    assert data_filter().value == "all" and "study" in data_filter().reason


@pytest.mark.parametrize(("colour", "channels"), [(0, 1), (3, 1), (4, 3), (40, 3)])
def test_channels_are_3_when_at_least_a_tenth_of_the_images_carry_colour(colour, channels):
    choice = input_channels(fingerprint(colour_images=colour))
    assert choice.value == channels and choice.reason.startswith(str(channels))
    assert input_channels(fingerprint(sampled=0, colour_images=0)).value == 1


@pytest.mark.parametrize(
    ("side", "diameter", "crop", "why"),
    [
        (512, 20.0, 256, "the default"),          # large images, small objects
        (1022, 100.0, 416, "rounded up"),         # 4 x 100 = 400 -> 416
        (2000, 300.0, 512, "the largest"),        # 1200 capped at 512
        (300, 100.0, 288, "median image side"),   # 416 wanted, image only 300 px
        (200, 10.0, 192, "median image side"),    # small images: no crop past the image
        (64, 5.0, 64, "median image side"),
        (512, None, 256, "no objects"),
        (None, None, 256, "image sizes unknown"),  # no image could be read
    ],
)
def test_crop_from_image_and_object_size(side, diameter, crop, why):
    size = None if side is None else (side, float(side), 4000)
    fp = fingerprint(height=size, width=size, object_diameter=diameter)
    choice = crop_size(fp)
    assert choice.value == crop and choice.value % 32 == 0 and why in choice.reason


@pytest.mark.parametrize(("share", "value"), [(0.02, 0.5), (0.099, 0.5), (0.1, 0.0), (0.4, 0.0)])
def test_foreground_sampling_when_objects_are_sparse(share, value):
    assert foreground_sampling(fingerprint(foreground_fraction=share)).value == value
    assert foreground_sampling(fingerprint(foreground_fraction=None)).value == 0.0


@pytest.mark.parametrize(("diameter", "factor"),
                         [(94.2, 0.34), (96.0, 0.333), (48.0, None), (24.0, None), (None, None)])
def test_large_objects_are_shrunk_to_32_px_never_enlarged(diameter, factor):
    choice = rescale(fingerprint(object_diameter=diameter))
    assert choice.value == factor
    if factor is not None:
        assert diameter * factor == pytest.approx(32, abs=0.1)
    assert rescale(fingerprint(), user=0.5).value == 0.5


@pytest.mark.parametrize(("n_train", "per_epoch", "epochs"),
                         [(20, None, 100), (34, None, 59), (50, None, 40), (471, None, 40),
                          (20, 200, 40), (1, None, 2000)])
def test_epochs_see_at_least_2000_crops_and_at_least_40_epochs(n_train, per_epoch, epochs):
    assert training_epochs(n_train, per_epoch, max_time=None).value == epochs


def test_a_time_budget_leaves_epochs_unset_and_a_users_epochs_win():
    budget = training_epochs(20, None, max_time=12.0)
    assert budget.value is None and "12-minute budget" in budget.reason
    assert training_epochs(20, None, max_time=12.0, user=5).value == 5


# --- derive_config ----------------------------------------------------------------------------


def test_derive_config_fills_only_what_was_not_given():
    cfg = RunConfig.model_validate({"data": {"root": "/data", "filter": "study", "crop": 128}})
    assert unset_fields(cfg.data) == ("val", "resize")
    fp = fingerprint(colour_images=40, foreground_fraction=0.05)
    derived, reasons = derive_config(cfg, fp)
    assert (derived.data.filter, derived.data.crop) == ("study", 128)  # given values kept
    assert derived.data.val == 6
    # Recipe proposals are not applied before their benchmark: the defaults stay.
    assert (derived.data.channels, derived.data.foreground_sampling) == (1, 0.0)
    assert set(reasons) == {"data.val", "data.resize"}
    assert derived.data.resize is None  # 20 px objects are not rescaled
    assert derived.derived == reasons and unset_fields(derived.data) == ()
    # Derived values count as set: deriving again changes nothing.
    assert derive_config(derived, fingerprint()) == (derived, {})
    assert {k: c.value for k, c in derive_all(fp).items()} == {
        "filter": "all", "val": 6, "channels": 3, "crop": 256, "foreground_sampling": 0.5,
        "resize": None}


def test_large_objects_are_rescaled_by_training_and_the_reason_recorded():
    cfg = RunConfig.model_validate({"data": {"root": "/data"}})
    derived, reasons = derive_config(cfg, fingerprint(object_diameter=96.0))
    assert derived.data.resize == 0.333
    assert "96 px across" in reasons["data.resize"]
    given = RunConfig.model_validate({"data": {"root": "/data", "resize": 0.5}})
    assert derive_config(given, fingerprint(object_diameter=96.0))[0].data.resize == 0.5


def test_configs_that_set_everything_are_unchanged():
    for name in ("demo", "neurips"):
        study = load_study_config(packaged_config(name))
        for row in study.rows:
            cfg = study.run_config(row)
            big = fingerprint(colour_images=40, object_diameter=90.0)
            assert derive_config(cfg, big) == (cfg, {})
    assert load_study_config(packaged_config("neurips")).defaults.data.filter == "study"


def test_a_yaml_leaves_unset_what_it_does_not_mention(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"data": {"crop": 128}, "train": {"epochs": 2}}))
    cfg = run_config_with_overrides(path, {"data.val": 0.2, "data.filter": None})
    assert unset_fields(cfg.data) == ("filter", "resize")
    assert (cfg.data.crop, cfg.data.val, cfg.train.epochs) == (128, 0.2, 2)


# --- messages name the flags ------------------------------------------------------------------


def test_split_errors_name_the_command_line_flags(tmp_path):
    write_dataset(tmp_path / "png", n=4, size=64, seed=0, png_fraction=1.0)
    with pytest.raises(DataError, match=r"filter 'study'; use --filter all"):
        make_splits(DataConfig(root=tmp_path / "png", filter="study", val=1), seed=0)
    with pytest.raises(DataError, match=r"--val 3 asks for 3 .* only 3 .*; lower it, e\.g\. --val 2"):
        make_splits(DataConfig(root=tmp_path / "png", filter="all", val=3), seed=0)
    write_dataset(tmp_path / "two", n=2, size=64, seed=0, png_fraction=0.0)
    with pytest.raises(DataError, match="add labelled images"):
        make_splits(DataConfig(root=tmp_path / "two", filter="all", val=1, test_fraction=0.5),
                    seed=0)


def test_training_images_are_train_and_val_of_the_splits(tmp_path):
    write_dataset(tmp_path / "d", n=12, size=64, seed=0)
    cfg = DataConfig(root=tmp_path / "d", filter="all", val=3)
    splits = make_splits(cfg, seed=4)
    assert training_images(cfg, seed=4) == sorted([*splits.train, *splits.val],
                                                    key=lambda s: s.name)


# --- wiring into training ---------------------------------------------------------------------

TINY = {"name": "unet_plain", "options": {"tiny": True}}


def tiny(root: Path, **data) -> RunConfig:
    return RunConfig.model_validate({
        "data": {"root": str(root), "samples_per_epoch": 4, **data}, "model": TINY,
        "train": {"epochs": 1, "batch_size": 4}, "eval": {"bootstrap": 0},
    })


def test_a_png_folder_trains_without_filter_and_config_records_why(tmp_path):
    write_dataset(tmp_path / "png", n=12, size=64, seed=0, png_fraction=1.0)
    result = fit(tiny(tmp_path / "png"), tmp_path / "run", progress=False)
    assert result.splits.counts() == {"train": 9, "val": 2, "test": 1}
    saved = yaml.safe_load(RunDir(tmp_path / "run").config_path.read_text())
    assert saved["data"]["filter"] == "all" and saved["data"]["val"] == 2
    assert saved["data"]["channels"] == 1 and saved["data"]["crop"] == 256
    assert set(saved["derived"]) == {"data.filter", "data.val", "data.resize"}
    assert saved["data"]["resize"] is None  # small synthetic cells are not rescaled
    assert saved["derived"]["data.val"].startswith("2 of 11 images")
    assert RunDir(tmp_path / "run").fingerprint_path.is_file()
    assert RunDir(tmp_path / "run").read_config() == result.config


def test_a_40_image_set_holds_out_at_most_8_for_validation(tmp_path):
    write_dataset(tmp_path / "d", n=40, size=64, seed=0)
    result = fit(tiny(tmp_path / "d"), tmp_path / "run", progress=False)
    assert result.splits.counts() == {"train": 31, "val": 5, "test": 4}


def test_derivation_is_repeatable_from_the_saved_fingerprint(tmp_path, monkeypatch):
    """What a DDP worker or a rerun does: same config, read from the run folder's cache."""
    write_dataset(tmp_path / "d", n=8, size=64, seed=0)
    run = RunDir(tmp_path / "run")
    first = derive_settings(tiny(tmp_path / "d"), run)
    monkeypatch.setattr(fpmod, "read_image", lambda p: pytest.fail(f"{p} read again"))
    assert derive_settings(tiny(tmp_path / "d"), run) == first
    assert derive_settings(first, run) is first  # nothing left to derive


def test_a_given_split_fixes_the_validation_count(tmp_path):
    write_dataset(tmp_path / "d", n=8, size=64, seed=0)
    splits = make_splits(DataConfig(root=tmp_path / "d", filter="all", val=3), seed=0)
    cfg = derive_settings(tiny(tmp_path / "d"), RunDir(tmp_path / "run"), splits)
    assert cfg.data.val == 3 and "split given" in cfg.derived["data.val"]


def test_a_colour_set_is_proposed_three_channels_but_trains_as_before(tmp_path):
    write_dataset(tmp_path / "d", n=6, size=64, seed=0, png_fraction=0.0)
    rng = np.random.default_rng(0)
    for image in (tmp_path / "d" / "images").glob("*.tif"):
        write_png(image.with_suffix(".png"), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
        image.unlink()
    run = RunDir(tmp_path / "run")
    cfg = derive_settings(tiny(tmp_path / "d"), run)
    assert cfg.data.channels == 1 and "data.channels" not in cfg.derived
    saved = json.loads(run.fingerprint_path.read_text())["fingerprint"]
    proposal = derive_all(Fingerprint.from_dict(saved))
    assert proposal["channels"].value == 3 and proposal["channels"].reason.startswith("3 (RGB)")


def test_cli_val_flag_and_derived_settings(tmp_path):
    write_dataset(tmp_path / "png", n=12, size=64, seed=0, png_fraction=1.0)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"model": TINY, "train": {"epochs": 1},
                                      "data": {"samples_per_epoch": 4}}))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(config), "--data", str(tmp_path / "png"),
                                      "--val", "3", "--resize", "1", "--out", str(out),
                                      "--no-evaluate"])
    assert result.exit_code == 0, result.output
    saved = RunDir(out).read_config()
    assert saved.data.val == 3 and saved.data.filter == "all" and saved.data.resize == 1.0
    assert "data.val" not in saved.derived and "data.filter" in saved.derived
    assert "data.resize" not in saved.derived  # given: rescaling off
    assert RunDir(out).read_splits().counts()["val"] == 3


# --- the network's width for a time budget on the CPU ----------------------------------------


def budgeted(model: dict | None = None, train: dict | None = None) -> RunConfig:
    """What `celltune train --data D --max-time 3` validates: a U-Net sized by nobody."""
    return RunConfig.model_validate({"model": model or {},
                                     "train": {"max_time": 3, **(train or {})}})


def n_params(net) -> int:
    return sum(p.numel() for p in net.parameters())


def test_a_cpu_budget_trains_the_light_unet_and_says_why():
    cfg, reasons = derive_network(budgeted(), gpu=False)
    assert cfg.model.encoder == "resnet18"
    assert cfg.model.options["decoder_channels"] == [128, 64, 32, 16, 8]
    assert "3-minute budget" in reasons["model.encoder"]
    assert "--encoder resnet34" in reasons["model.encoder"]
    assert cfg.train.batch_size == 4 and "--batch-size 8" in reasons["train.batch_size"]
    assert set(cfg.derived) == {"model.encoder", "model.options.decoder_channels",
                                "train.batch_size"}
    light, full = build_network(cfg.model, 1), build_network(budgeted().model, 1)
    assert n_params(light) < 0.55 * n_params(full)  # 12.5M vs 24.4M


def test_a_users_batch_size_is_kept_with_the_light_unet():
    cfg, reasons = derive_network(budgeted(train={"batch_size": 8}), gpu=False)
    assert cfg.model.encoder == "resnet18" and cfg.train.batch_size == 8
    assert "train.batch_size" not in reasons


@pytest.mark.parametrize("model, train, gpu", [
    ({}, {}, True),                                            # a GPU: steps are cheap
    ({}, {"epochs": 10}, False),                               # a fixed length, not a budget
    ({}, {"max_time": None}, False),                           # no budget
    ({"encoder": "resnet34"}, {}, False),                      # the user chose the encoder
    ({"options": {"decoder_channels": [64, 32, 16, 16, 8]}}, {}, False),
    ({"weights": "imagenet"}, {}, False),                      # pretrained: keep its encoder
    ({"name": "unetplusplus"}, {}, False),                     # not measured
    ({"options": {"tiny": True}}, {}, False),
])
def test_the_network_stays_as_configured_outside_a_cpu_budget(model, train, gpu):
    config = budgeted(model, train)
    assert derive_network(config, gpu=gpu) == (config, {})


def test_a_budgeted_cpu_run_records_the_light_network_and_predicts_with_it(tmp_path):
    from celltune.inference.predict import Predictor

    write_dataset(tmp_path / "d", n=8, size=64, seed=0)
    config = RunConfig.model_validate({
        "data": {"root": str(tmp_path / "d"), "samples_per_epoch": 4, "crop": 64},
        "train": {"max_time": 0.05, "accelerator": "cpu"},
        "eval": {"bootstrap": 0},
    })
    result = fit(config, tmp_path / "run", progress=False)
    saved = yaml.safe_load(RunDir(tmp_path / "run").config_path.read_text())
    assert saved["model"]["encoder"] == "resnet18"
    assert saved["model"]["options"] == {"decoder_channels": [128, 64, 32, 16, 8]}
    assert saved["train"]["batch_size"] == 4
    assert "budget" in saved["derived"]["model.encoder"]
    # A resume reads this config back: everything set, nothing derived again.
    again = RunDir(tmp_path / "run").read_config()
    assert derive_network(again, gpu=False) == (again, {})
    net = Predictor.from_run(result.run.path).model
    assert n_params(net) == n_params(build_network(result.config.model, 1))
