"""Merging a run config YAML with command-line overrides (what `celltune train` does)."""

from __future__ import annotations

from pathlib import Path

import pytest

from celltune.config import RunConfig, nest, run_config_with_overrides, save_run_config
from celltune.errors import ConfigError


def test_nest_drops_options_that_were_not_given():
    flat = {"train.epochs": 5, "data.root": None, "model.name": "unet", "train.compile": False}
    assert nest(flat) == {"train": {"epochs": 5, "compile": False}, "model": {"name": "unet"}}
    assert nest({}) == {}


def test_overrides_win_over_the_yaml_and_keep_its_other_values(tmp_path: Path):
    path = tmp_path / "run.yaml"
    base = RunConfig.model_validate({"name": "mine", "train": {"epochs": 7, "lr": 0.01},
                                     "model": {"name": "pspnet", "options": {"tiny": True}}})
    save_run_config(base, path)
    cfg = run_config_with_overrides(path, {"train.epochs": 3, "train.lr": None,
                                           "model.head": "two_class"}, default_name="folder")
    assert cfg.train.epochs == 3 and cfg.train.lr == 0.01  # None keeps the YAML's value
    assert cfg.model.name == "pspnet" and cfg.model.options == {"tiny": True}
    assert cfg.model.head == "two_class"
    assert cfg.name == "mine"  # the YAML's own name is kept


def test_defaults_take_the_run_folder_name_and_device_counts_become_numbers():
    cfg = run_config_with_overrides(None, {"train.devices": "2"}, default_name="runs-a")
    assert cfg.name == "runs-a" and cfg.train.devices == 2
    assert run_config_with_overrides(None, {"train.devices": "auto"}).train.devices == "auto"
    assert run_config_with_overrides(None, {"data.crop": 128}).name == "run"


def test_a_bad_override_names_its_source(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"command line: invalid configuration \(data.crop"):
        run_config_with_overrides(None, {"data.crop": 100})
    with pytest.raises(ConfigError, match=r"unknown key 'train\.epoch'"):
        run_config_with_overrides(None, {"train.epoch": 3})
