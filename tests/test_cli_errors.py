"""The command line on bad input: one line, a non-zero exit code, no traceback unless --debug.

``celltune.cli.main`` (the console script) catches the errors, so the tests call it with
``sys.argv`` patched, or run ``python -m celltune.cli`` in a subprocess for a few cases.
Batch commands (data summary, evaluate, predict) report a bad file and go on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml

from celltune import cli
from celltune.config import DataConfig, ModelConfig, RunConfig, save_run_config
from celltune.data.neurips import make_splits
from celltune.data.synthetic import write_dataset
from celltune.errors import ImageReadError
from celltune.models.build import build_network

TINY = {"name": "unet_plain", "options": {"tiny": True}}
DATA = {"val": 1, "test_fraction": 0.34, "crop": 32}


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_dataset(root, n=6, size=64, seed=0, png_fraction=0.0)
    return root


@pytest.fixture
def splits(dataset: Path):
    """The splits `celltune train` draws with DATA and seed 0."""
    return make_splits(DataConfig(root=dataset, **DATA), seed=0)


@pytest.fixture
def config(tmp_path: Path, dataset: Path) -> Path:
    path = tmp_path / "cfg.yaml"
    cfg = {"data": {"root": str(dataset), **DATA}, "model": TINY, "train": {"epochs": 1}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str):
    """Call the console script in-process; returns (exit code, stdout + stderr)."""
    monkeypatch.setattr(sys, "argv", ["celltune", *map(str, args)])
    monkeypatch.setenv("COLUMNS", "1000")  # long tmp paths must not be folded by rich
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # main() replaces it
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out + out.err


def assert_one_error_line(output: str, *fragments: str) -> str:
    """The output is exactly one line, ``error: ...``, holding every fragment."""
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and len(lines) == 1, output
    assert "Traceback" not in output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


# --- single errors from `celltune train` ------------------------------------------------------


def _corrupt(kind: str, image: Path, label: Path) -> tuple[Path, str]:
    """Damage one training pair; returns the file the message must name and its problem."""
    if kind == "truncated tiff":
        image.write_bytes(image.read_bytes()[:300])
        return image, "truncated or corrupt"
    if kind == "empty file":
        image.write_bytes(b"")
        return image, "file is empty (0 bytes)"
    if kind == "nan image":
        tifffile.imwrite(image, np.full((64, 64), np.nan, np.float32))
        return image, "contains NaN or infinite pixel values"
    if kind == "stack":
        tifffile.imwrite(image, np.zeros((6, 64, 64), np.uint16))
        return image, "a stack or volume"
    if kind == "label size":
        tifffile.imwrite(label, np.zeros((32, 64), np.int16))
        return label, "label size 64×32 differs from its image's 64×64"
    if kind == "negative label":
        tifffile.imwrite(label, np.full((64, 64), -1, np.int16))
        return label, "label has negative values (min -1)"
    if kind == "float label":
        tifffile.imwrite(label, np.full((64, 64), 0.5, np.float32))
        return label, "label has non-integer values"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "truncated tiff",
        "empty file",
        "nan image",
        "stack",
        "label size",
        "negative label",
        "float label",
    ],
)
def test_train_on_bad_file(monkeypatch, capsys, tmp_path, config, splits, kind) -> None:
    sample = splits.train[0]
    named, problem = _corrupt(kind, sample.image, sample.label)
    code, output = run_main(monkeypatch, capsys, "train", config, "--out", tmp_path / "run")
    assert code == 1
    line = assert_one_error_line(output, str(named), problem)
    assert line.endswith(".")
    assert not (tmp_path / "run" / "checkpoints").exists()  # it failed before training


def test_debug_shows_the_traceback(monkeypatch, tmp_path, config, splits) -> None:
    _corrupt("stack", splits.train[0].image, splits.train[0].label)
    monkeypatch.setattr(
        sys, "argv", ["celltune", "--debug", "train", str(config), "--out", str(tmp_path / "r")]
    )
    with pytest.raises(ImageReadError, match="stack or volume"):
        cli.main()


def test_empty_after_filter(monkeypatch, capsys, tmp_path, dataset) -> None:
    for tif in (dataset / "images").glob("*.tif"):
        from PIL import Image

        Image.fromarray(np.zeros((64, 64), np.uint8)).save(tif.with_suffix(".png"))
        tif.unlink()
    code, output = run_main(
        monkeypatch,
        capsys,
        "train",
        "--data",
        dataset,
        "--model",
        "unet_plain",
        "--filter",
        "study",
        "--out",
        tmp_path / "run",
    )
    assert code == 1
    assert_one_error_line(output, str(dataset), "training split is empty with filter 'study'")


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--model", "unet9", "Unknown model 'unet9'; valid names are: pspnet, swin_unet, unet,"),
        ("--aug", "heavy", "Unknown augmentation preset 'heavy'; valid names are: aug1, aug2"),
        ("--loss", "l2", "Unknown loss 'l2'; valid names are: bce, bce_dice"),
        ("--filter", "tif", "Unknown filter 'tif'; valid names are: all, study"),
    ],
)
def test_unknown_names(monkeypatch, capsys, tmp_path, config, option, value, expected) -> None:
    out = tmp_path / "run"
    code, output = run_main(monkeypatch, capsys, "train", config, option, value, "--out", out)
    assert code == 2
    assert_one_error_line(output, expected)
    assert not out.exists()


def test_unknown_config_key(monkeypatch, capsys, tmp_path, dataset) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump({"data": {"root": str(dataset)}, "modle": {"name": "unet"}}))
    code, output = run_main(monkeypatch, capsys, "train", path, "--out", tmp_path / "run")
    assert code == 2
    assert_one_error_line(output, str(path), "unknown key 'modle'", "valid keys: name, data, model")


def test_output_under_a_file(monkeypatch, capsys, tmp_path, config) -> None:
    (tmp_path / "file.txt").write_text("")
    out = tmp_path / "file.txt" / "run"
    code, output = run_main(monkeypatch, capsys, "train", config, "--out", out)
    assert code == 1
    assert_one_error_line(output, str(out), "cannot write to the output folder")


def test_existing_run_folder_is_refused(monkeypatch, capsys, tmp_path, config) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code, output = run_main(monkeypatch, capsys, "train", config, "--out", out)
    assert code == 1
    assert_one_error_line(output, str(out), "--resume", "--overwrite")
    assert (out / "notes.txt").read_text() == "keep me"


# --- a run folder without training: config, splits and an untrained tiny checkpoint ------------


def make_run(run: Path, dataset: Path, model: dict = TINY) -> Path:
    cfg = RunConfig.model_validate({"data": {"root": str(dataset), **DATA}, "model": TINY})
    save_run_config(cfg, run / "config.yaml")
    make_splits(cfg.data, seed=0).save(run / "splits.json")
    torch.manual_seed(0)
    net = build_network(ModelConfig.model_validate(model), 1)
    hparams = {
        "model": ModelConfig.model_validate(model).model_dump(mode="json"),
        "train": {},
        "in_channels": 1,
    }
    (run / "checkpoints").mkdir(parents=True)
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    for name in ("best", "last"):
        torch.save(
            {"hyper_parameters": hparams, "state_dict": state}, run / "checkpoints" / f"{name}.ckpt"
        )
    return run


def test_resume_with_checkpoint_of_another_model(monkeypatch, capsys, tmp_path, dataset) -> None:
    run = make_run(
        tmp_path / "run", dataset, model={"name": "unet_plain_bn", "options": {"tiny": True}}
    )
    code, output = run_main(monkeypatch, capsys, "train", "--out", run, "--resume")
    assert code == 1
    ckpt = run / "checkpoints" / "last.ckpt"
    assert_one_error_line(
        output, f"{ckpt}: checkpoint holds model 'unet_plain_bn'", "describes 'unet_plain'"
    )


def test_evaluate_with_checkpoint_of_another_model(monkeypatch, capsys, tmp_path, dataset) -> None:
    run = make_run(tmp_path / "run", dataset, model={"name": "unet", "options": {"tiny": True}})
    code, output = run_main(monkeypatch, capsys, "evaluate", run)
    assert code == 1
    assert_one_error_line(output, str(run / "checkpoints" / "best.ckpt"), "holds model 'unet'")


# --- batch commands: one bad file is reported, the rest go on ------------------------------------


def test_evaluate_skips_a_bad_image(monkeypatch, capsys, tmp_path, dataset, splits) -> None:
    run = make_run(tmp_path / "run", dataset)
    bad = splits.test[0]
    bad.image.write_bytes(bad.image.read_bytes()[:200])
    code, output = run_main(monkeypatch, capsys, "evaluate", run)
    assert code == 1  # partial results, so not success
    flat = " ".join(output.split())
    assert f"skipped {bad.name}: {bad.image}: cannot be decoded as TIFF" in flat
    assert "Traceback" not in output and "TiffFileError" not in output
    summary = json.loads((run / "eval" / "test" / "summary.json").read_text())
    assert summary["n_images"] == len(splits.test) - 1
    assert [f["name"] for f in summary["failures"]] == [bad.name]
    assert "truncated or corrupt" in summary["failures"][0]["error"]


def test_evaluate_warns_about_unpaired_files(monkeypatch, capsys, tmp_path, dataset) -> None:
    run = make_run(tmp_path / "run", dataset)
    stray = dataset / "images" / "stray.tif"
    tifffile.imwrite(stray, np.zeros((64, 64), np.uint16))
    code, output = run_main(monkeypatch, capsys, "evaluate", run, "--data", dataset)
    assert code == 0
    flat = " ".join(output.split())
    assert f"warning: {stray}: image has no label file; it is left out." in flat


def test_summary_lists_bad_files(monkeypatch, capsys, dataset) -> None:
    images = sorted((dataset / "images").glob("*.tif"))
    images[0].write_bytes(b"")
    images[1].write_bytes(images[1].read_bytes()[:100])
    labels = sorted((dataset / "labels").glob("*.tiff"))
    labels[2].write_bytes(b"junk")
    code, output = run_main(monkeypatch, capsys, "data", "summary", dataset, "--json")
    assert code == 0
    report = json.loads(output[output.index("{") :])
    problems = {Path(u["path"]).name: u["problem"] for u in report["unreadable"]}
    assert set(problems) == {images[0].name, images[1].name, labels[2].name}
    assert "empty" in problems[images[0].name]
    assert "Traceback" not in output


def test_predict_skips_a_bad_image(monkeypatch, capsys, tmp_path, dataset) -> None:
    run = make_run(tmp_path / "run", dataset)
    good = dataset / "images" / "cell_00001.tif"
    bad = tmp_path / "broken.tif"
    bad.write_bytes(good.read_bytes()[:150])
    out = tmp_path / "pred"
    code, output = run_main(
        monkeypatch, capsys, "predict", run, good, bad, "--out", out, "--no-progress"
    )
    assert code == 1
    assert "broken" in output and "Traceback" not in output
    assert (out / "cell_00001_mask.tif").is_file()
    assert not list(out.glob("broken*"))


# --- the real console script in a subprocess ----------------------------------------------------


def _celltune(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "celltune.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_subprocess_bad_image_one_line(tmp_path, config, splits) -> None:
    _corrupt("truncated tiff", splits.train[0].image, splits.train[0].label)
    result = _celltune("train", config, "--out", tmp_path / "run")
    assert result.returncode == 1
    assert_one_error_line(result.stdout + result.stderr, str(splits.train[0].image))


def test_subprocess_unknown_model_and_debug(tmp_path, config) -> None:
    result = _celltune("train", config, "--model", "unet9", "--out", tmp_path / "a")
    assert result.returncode == 2
    assert_one_error_line(result.stdout + result.stderr, "Unknown model 'unet9'")
    debug = _celltune("--debug", "train", config, "--model", "unet9", "--out", tmp_path / "b")
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr and "ConfigError: Unknown model 'unet9'" in debug.stderr


class _Unreadable(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> None:
        raise ImageReadError("/data/cell_7.tif: file is empty (0 bytes).")


def test_error_from_a_dataloader_worker_is_one_line() -> None:
    """A worker re-raises the error wrapped in its traceback; the CLI keeps the sentence."""
    loader = torch.utils.data.DataLoader(_Unreadable(), num_workers=1)
    with pytest.raises(ImageReadError) as err:
        next(iter(loader))
    assert "Original Traceback" in str(err.value)
    assert cli._one_line(err.value) == "/data/cell_7.tif: file is empty (0 bytes)."
