"""Bad input: every case in issue 8 fails with one sentence naming the file and the problem.

Library level: the error type and its message. The command line (one line, exit code, no
traceback) is covered in test_cli_errors.py. Decisions recorded here:

- A constant image is valid input (a blank field of view): it is normalised to zeros, with
  no warning, and trains and predicts like any other image.
- An image without a label, or a label without an image, cannot be used; making splits warns
  naming the file and goes on with the pairs (an error would refuse a usable dataset), and
  code that needs the label (training crops, evaluation) reports the image by name.
- A label stored as float is accepted when every value is a whole number.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from celltune.config import DataConfig, RunConfig, packaged_config, run_config_from_dict
from celltune.data.dataset import CropDataset, load_pair
from celltune.data.neurips import discover, make_splits
from celltune.data.samples import Sample
from celltune.data.synthetic import write_dataset
from celltune.errors import ConfigError, DataError, ImageReadError, OutputError, RunError
from celltune.io import read_image, read_label, write_text
from celltune.models.build import build_network
from celltune.models.checkpoint import load_model_from_checkpoint
from celltune.training.fit import check_names, fit, prepare_run_dir
from celltune.training.resume import check_checkpoint

TINY = {"name": "unet_plain", "options": {"tiny": True}}


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """Six 64×64 TIFF images with labels in the bare NeurIPS layout."""
    root = tmp_path / "data"
    write_dataset(root, n=6, size=64, seed=0, png_fraction=0.0)
    return root


def _image(root: Path, i: int = 1) -> Path:
    return root / "images" / f"cell_{i:05d}.tif"


def _label(root: Path, i: int = 1) -> Path:
    return root / "labels" / f"cell_{i:05d}_label.tiff"


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _png(path: Path, size: int = 64) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(path)
    return path


# --- unreadable files ----------------------------------------------------------------------


def test_truncated_tiff_names_file(dataset: Path) -> None:
    path = _image(dataset)
    _truncate(path)
    with pytest.raises(ImageReadError, match="truncated or corrupt") as err:
        read_image(path)
    assert str(path) in str(err.value)


def test_garbage_tiff_names_file(tmp_path: Path) -> None:
    path = tmp_path / "noise.tif"
    path.write_bytes(b"II*\x00" + bytes(range(256)) * 4)  # TIFF magic, nonsense after it
    with pytest.raises(ImageReadError, match=r"no image data; the file may be .* corrupt") as err:
        read_image(path)
    assert str(path) in str(err.value)


def test_truncated_png_names_file(tmp_path: Path) -> None:
    path = _png(tmp_path / "cut.png")
    _truncate(path, keep=0.6)
    with pytest.raises(ImageReadError, match="cannot be decoded as PNG") as err:
        read_image(path)
    assert str(path) in str(err.value)


def test_corrupt_png_names_file(tmp_path: Path) -> None:
    path = _png(tmp_path / "flipped.png")
    data = bytearray(path.read_bytes())
    data[60:120] = bytes(60)  # zeroes inside the compressed IDAT stream: its CRC fails
    path.write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match="truncated or corrupt") as err:
        read_image(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_empty_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"empty{suffix}"
    path.touch()
    with pytest.raises(ImageReadError, match=r"file is empty \(0 bytes\)") as err:
        read_image(path)
    assert str(path) in str(err.value)
    with pytest.raises(ImageReadError, match="empty"):
        read_label(path)


# --- unusable content ----------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_image(tmp_path: Path, bad: float) -> None:
    image = np.ones((32, 32), np.float32)
    image[5, 7] = bad
    path = tmp_path / "bad.tif"
    tifffile.imwrite(path, image)
    with pytest.raises(ImageReadError, match="NaN or infinite") as err:
        read_image(path)
    assert str(path) in str(err.value)


def test_float64_beyond_float32_range(tmp_path: Path) -> None:
    path = tmp_path / "huge.tif"
    tifffile.imwrite(path, np.full((8, 8), 1e300, np.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "overflow encountered in cast" on the way
        with pytest.raises(ImageReadError, match="exceed the float32 range") as err:
            read_image(path)
    assert str(path) in str(err.value)


def test_constant_image_is_normalised_to_zeros(dataset: Path) -> None:
    tifffile.imwrite(_image(dataset), np.full((64, 64), 1234, np.uint16))
    sample = Sample(_image(dataset), _label(dataset))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # documented: no warning for a blank field of view
        image, labels = load_pair(sample)
    assert image.shape == (64, 64, 1) and image.dtype == np.float32
    assert not image.any()
    assert labels.shape == (64, 64) and labels.max() > 0  # the labels are kept as they are
    crop = CropDataset([sample], crop=32, augment="none", cache=False)[0]
    assert not crop["image"].any() and crop["image"].shape == (1, 32, 32)


def test_stack_where_image_expected(tmp_path: Path) -> None:
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros((5, 32, 32), np.uint16))
    with pytest.raises(ImageReadError, match=r"shape \(5, 32, 32\), a stack or volume") as err:
        read_image(path)
    assert str(path) in str(err.value)


def test_four_dimensional_image(tmp_path: Path) -> None:
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, np.zeros((2, 3, 32, 32), np.uint8))
    with pytest.raises(ImageReadError, match="stack or volume"):
        read_image(path)


def test_stack_where_label_expected(tmp_path: Path) -> None:
    path = tmp_path / "stack_label.tiff"
    tifffile.imwrite(path, np.zeros((5, 32, 32), np.int16))
    with pytest.raises(ImageReadError, match=r"label has shape \(5, 32, 32\); expected a 2-D"):
        read_label(path)


def test_label_size_differs_from_image(dataset: Path) -> None:
    tifffile.imwrite(_label(dataset), np.zeros((48, 40), np.int16))
    with pytest.raises(ImageReadError) as err:
        load_pair(Sample(_image(dataset), _label(dataset)))
    message = str(err.value)
    assert str(_label(dataset)) in message
    assert "label size 40×48 differs from its image's 64×64" in message


def test_label_with_negative_values(tmp_path: Path) -> None:
    label = np.zeros((16, 16), np.int16)
    label[3, 3] = -2
    path = tmp_path / "neg_label.tiff"
    tifffile.imwrite(path, label)
    with pytest.raises(ImageReadError, match=r"negative values \(min -2\)") as err:
        read_label(path)
    assert str(path) in str(err.value)


def test_label_with_fractional_values(tmp_path: Path) -> None:
    label = np.zeros((16, 16), np.float32)
    label[2:5, 2:5] = 1.5
    path = tmp_path / "float_label.tiff"
    tifffile.imwrite(path, label)
    with pytest.raises(ImageReadError, match="non-integer values") as err:
        read_label(path)
    assert str(path) in str(err.value)


def test_label_with_whole_float_values_is_accepted(tmp_path: Path) -> None:
    label = np.zeros((16, 16), np.float32)
    label[2:5, 2:5] = 3.0
    path = tmp_path / "whole_float_label.tiff"
    tifffile.imwrite(path, label)
    out = read_label(path)
    assert out.dtype == np.int32 and out.max() == 3 and (out > 0).sum() == 9


# --- pairing and filtering ------------------------------------------------------------------


def test_image_without_label(dataset: Path) -> None:
    _label(dataset, 2).unlink()
    found = discover(dataset)
    assert found.unpaired_images == [_image(dataset, 2)]
    with pytest.warns(UserWarning, match="image has no label file; it is left out") as record:
        splits = make_splits(DataConfig(root=dataset, val=1, test_fraction=0.2), seed=0)
    assert any(str(_image(dataset, 2)) in str(w.message) for w in record)
    used = [s.image for s in splits.train + splits.val + splits.test]
    assert _image(dataset, 2) not in used and len(used) == 5
    # Code that needs the label reports the image by name.
    with pytest.raises(DataError, match="has no label file") as err:
        CropDataset([Sample(_image(dataset, 2), None)], crop=32, cache=False)
    assert str(_image(dataset, 2)) in str(err.value)


def test_label_without_image(dataset: Path) -> None:
    _image(dataset, 3).unlink()
    assert discover(dataset).unpaired_labels == [_label(dataset, 3)]
    with pytest.warns(UserWarning, match="label file has no image; it is left out") as record:
        make_splits(DataConfig(root=dataset, val=1, test_fraction=0.2), seed=0)
    assert any(str(_label(dataset, 3)) in str(w.message) for w in record)


def test_many_unpaired_files_are_summarised(dataset: Path) -> None:
    for i in range(7):
        _png(dataset / "images" / f"extra_{i}.png", size=16)
    with pytest.warns(UserWarning) as record:
        make_splits(DataConfig(root=dataset, filter="all", val=1, test_fraction=0.2), seed=0)
    messages = [str(w.message) for w in record]
    assert sum("image has no label file" in m for m in messages) == 5
    assert any("2 more unpaired files are left out" in m for m in messages)


def test_empty_dataset_after_filter(dataset: Path) -> None:
    for tif in sorted((dataset / "images").glob("*.tif")):
        _png(tif.with_suffix(".png"))
        tif.unlink()
    with pytest.raises(DataError) as err:
        make_splits(DataConfig(root=dataset, filter="study"), seed=0)
    message = str(err.value)
    assert str(dataset) in message
    assert "training split is empty with filter 'study'" in message
    assert "--filter all" in message  # the flag a user types, not a config key


def test_empty_dataset_folder(tmp_path: Path) -> None:
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "labels").mkdir()
    with pytest.raises(DataError, match="training split is empty"):
        make_splits(DataConfig(root=tmp_path / "data"), seed=0)


# --- configuration ----------------------------------------------------------------------------


def test_unknown_config_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError) as err:
        run_config_from_dict({"train": {"epoch": 3}}, "my.yaml")
    message = str(err.value)
    assert message.startswith("my.yaml: invalid configuration (unknown key 'train.epoch'")
    assert "valid keys: epochs, max_time, batch_size" in message


@pytest.mark.parametrize(
    ("section", "key", "value", "kind", "valid"),
    [
        ("model", "name", "unet3000", "model", "pspnet, swin_unet, unet, unet_plain"),
        ("train", "aug", "aug9", "augmentation preset", "aug1, aug2, none"),
        ("train", "loss", "hinge", "loss", "bce, bce_dice"),
        ("data", "filter", "tiff_only", "filter", "all, study"),
    ],
)
def test_unknown_name_fails_before_writing(
    tmp_path: Path, dataset: Path, section: str, key: str, value: str, kind: str, valid: str
) -> None:
    data: dict = {"data": {"root": str(dataset)}, "model": dict(TINY), "train": {}}
    data[section][key] = value
    cfg = run_config_from_dict(data)
    with pytest.raises(ConfigError, match=f"Unknown {kind} '{value}'; valid names are: {valid}"):
        check_names(cfg)
    out = tmp_path / "run"
    with pytest.raises(ConfigError):
        fit(cfg, out, progress=False)
    assert not out.exists()  # the corrected command must not meet a non-empty folder


def test_unknown_packaged_preset_lists_available() -> None:
    with pytest.raises(ConfigError, match=r"No packaged config 'nope'; available: .*demo"):
        packaged_config("nope")


# --- checkpoints --------------------------------------------------------------------------------


def _save_checkpoint(path: Path, model: dict, in_channels: int = 1) -> Path:
    from celltune.config import ModelConfig

    net = build_network(ModelConfig.model_validate(model), in_channels)
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    hparams = {
        "model": ModelConfig.model_validate(model).model_dump(mode="json"),
        "train": {},
        "in_channels": in_channels,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"hyper_parameters": hparams, "state_dict": state}, path)
    return path


def test_resume_checkpoint_from_another_model(tmp_path: Path) -> None:
    ckpt = _save_checkpoint(
        tmp_path / "run" / "checkpoints" / "last.ckpt",
        {"name": "unet_plain_bn", "options": {"tiny": True}},
    )
    cfg = RunConfig.model_validate({"model": TINY})
    with pytest.raises(RunError) as err:
        check_checkpoint(ckpt, cfg, tmp_path / "run" / "config.yaml")
    message = str(err.value)
    assert message.startswith(f"{ckpt}: checkpoint holds model 'unet_plain_bn'")
    assert "describes 'unet_plain'" in message


def test_checkpoint_with_other_channels(tmp_path: Path) -> None:
    ckpt = _save_checkpoint(tmp_path / "last.ckpt", TINY, in_channels=3)
    cfg = RunConfig.model_validate({"model": TINY})
    with pytest.raises(RunError, match=r"3 channel\(s\).* describes 'unet_plain' \(.*1 channel"):
        check_checkpoint(ckpt, cfg, "config.yaml")


def test_run_folder_with_checkpoint_of_another_model(tmp_path: Path) -> None:
    from celltune.config import save_run_config

    run = tmp_path / "run"
    save_run_config(RunConfig.model_validate({"model": TINY}), run / "config.yaml")
    ckpt = _save_checkpoint(
        run / "checkpoints" / "best.ckpt", {"name": "unet", "options": {"tiny": True}}
    )
    with pytest.raises(RunError) as err:
        load_model_from_checkpoint(ckpt)
    assert str(err.value).startswith(f"{ckpt}: checkpoint holds model 'unet'")
    assert str(run / "config.yaml") in str(err.value)


def test_matching_checkpoint_loads(tmp_path: Path) -> None:
    from celltune.config import save_run_config

    run = tmp_path / "run"
    save_run_config(RunConfig.model_validate({"model": TINY}), run / "config.yaml")
    ckpt = _save_checkpoint(run / "checkpoints" / "best.ckpt", TINY)
    net, hparams = load_model_from_checkpoint(ckpt)
    assert hparams["model"]["name"] == "unet_plain" and not net.training


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", None])
def test_corrupt_checkpoint(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "last.ckpt"
    if content is None:  # a real checkpoint cut in half
        _save_checkpoint(path, TINY)
        _truncate(path)
    else:
        path.write_bytes(content)
    cfg = RunConfig.model_validate({"model": TINY})
    with pytest.raises(RunError, match="cannot read the checkpoint") as err:
        check_checkpoint(path, cfg, "config.yaml")
    assert str(path) in str(err.value)


# --- outputs ---------------------------------------------------------------------------------------


def test_output_folder_under_a_file(tmp_path: Path) -> None:
    # Tests run as root, where permissions never block writing; a path below a regular file
    # cannot be created by anyone.
    blocker = tmp_path / "file.txt"
    blocker.write_text("I am a file")
    with pytest.raises(RunError, match="cannot write to the output folder") as err:
        prepare_run_dir(blocker / "run", resume=False, overwrite=False)
    assert str(blocker / "run") in str(err.value)
    with pytest.raises(OutputError, match="cannot write the file") as err:
        write_text(blocker / "eval" / "summary.json", "{}")
    assert str(blocker / "eval" / "summary.json") in str(err.value)
    assert blocker.read_text() == "I am a file"


def test_output_path_is_a_folder(tmp_path: Path) -> None:
    (tmp_path / "summary.json").mkdir()
    with pytest.raises(OutputError, match="cannot replace it"):
        write_text(tmp_path / "summary.json", "{}")
    assert not list(tmp_path.glob(".summary.json.*"))  # no temp file left behind


def test_run_folder_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("x")
    with pytest.raises(RunError, match="exists and is not a folder"):
        prepare_run_dir(tmp_path / "run", resume=False, overwrite=True)
    assert (tmp_path / "run").read_text() == "x"
