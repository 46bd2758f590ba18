"""Predictor and batch prediction over files: outputs, counts, bad inputs, overwrite, CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from typer.testing import CliRunner

from celltune.cli import app
from celltune.errors import ConfigError, DataError, RunError
from celltune.inference.batch import predict_files
from celltune.inference.files import label_in_bands, outlines
from celltune.inference.instances import label_instances
from celltune.inference.predict import Predictor
from celltune.io import normalize
from tiny_runs import make_run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("tiny"), threshold=0.37)


class Brightness(torch.nn.Module):
    """Foreground = normalised intensity above 0.5: predictions that can be worked out by hand."""

    size_divisor = 32

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(20.0)
            self.conv.bias.fill_(-10.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def brightness_predictor(**kwargs) -> Predictor:
    return Predictor(Brightness(), device="cpu", tile=64, **kwargs)


def discs(height: int = 64, width: int = 80, dtype=np.uint8, low=10, high=200) -> np.ndarray:
    """Three separate discs of radius 6 on a dark background."""
    yy, xx = np.mgrid[:height, :width]
    img = np.full((height, width), low, dtype=dtype)
    for cy, cx in ((15, 15), (15, 50), (45, 30)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = high
    return img


def disc_area() -> int:
    yy, xx = np.mgrid[-6:7, -6:7]
    return int(((yy**2 + xx**2) <= 36).sum())


def write_images(folder: Path, names: list[str], image: np.ndarray | None = None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    image = discs() if image is None else image
    paths = []
    for name in names:
        path = folder / name
        if path.suffix == ".png":
            Image.fromarray(image).save(path)
        else:
            tifffile.imwrite(path, image)
        paths.append(path)
    return paths


def read_counts(out: Path) -> list[dict[str, str]]:
    with (out / "counts.csv").open() as fh:
        return list(csv.DictReader(fh))


# --- Predictor -------------------------------------------------------------------------------


def test_from_run_reproduces_the_network_and_threshold(tiny_run: Path) -> None:
    predictor = Predictor.from_run(tiny_run, device="cpu")
    assert predictor.threshold == pytest.approx(0.37)
    assert (predictor.tile, predictor.overlap, predictor.batch_size) == (64, 0.25, 2)
    img = discs(64, 64).astype(np.float32)  # one 64x64 tile: must equal a plain forward pass
    result = predictor.predict(img)
    with torch.no_grad():
        direct = torch.sigmoid(predictor.model(torch.from_numpy(normalize(img))[None, None]))
    np.testing.assert_allclose(result.probability, direct[0, 0].numpy(), atol=1e-5)
    np.testing.assert_array_equal(result.mask, result.probability >= 0.37)


def test_two_class_run_uses_the_softmax_foreground_and_argmax(tmp_path: Path) -> None:
    run = make_run(tmp_path, head="two_class", threshold=0.2)
    predictor = Predictor.from_run(run, device="cpu", tile=512)
    assert predictor.threshold == 0.5  # argmax, whatever threshold.json says
    img = discs(64, 64).astype(np.float32)
    with torch.no_grad():
        logits = predictor.model(torch.from_numpy(normalize(img))[None, None])
    expected = torch.softmax(logits, dim=1)[0, 1].numpy()
    np.testing.assert_allclose(predictor.predict_proba(img), expected, atol=1e-5)


@pytest.mark.parametrize("shape", [(100, 70), (40, 1), (1, 33), (30, 40, 3)])
def test_any_image_shape_gives_a_same_size_mask(shape: tuple[int, ...]) -> None:
    img = np.random.default_rng(0).random(shape).astype(np.float32)
    result = brightness_predictor().predict(img)
    assert result.probability.shape == shape[:2]
    gray = img.mean(axis=-1) if img.ndim == 3 else img
    np.testing.assert_array_equal(result.mask, normalize(gray) > 0.5)


def test_bad_tiling_options_are_rejected() -> None:
    with pytest.raises(ConfigError, match="--overlap"):
        brightness_predictor(overlap=1.0)
    with pytest.raises(ConfigError, match="--batch-size"):
        brightness_predictor().with_options(batch_size=0)


# --- predict_files ---------------------------------------------------------------------------


def test_outputs_and_counts_match_hand_computed_values(tmp_path: Path) -> None:
    [path] = write_images(tmp_path / "in", ["cells.tif"])
    out = tmp_path / "out"
    result = predict_files(brightness_predictor(), [path], out, save_prob=True, progress=False)

    assert result.ok and len(result.images) == 1
    mask = tifffile.imread(out / "cells_mask.tif")
    labels = tifffile.imread(out / "cells_labels.tif")
    prob = tifffile.imread(out / "cells_prob.tif")
    overlay = np.asarray(Image.open(out / "cells_overlay.png"))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
    np.testing.assert_array_equal(mask == 255, discs() == 200)
    assert labels.dtype == np.int32 and labels.max() == 3
    assert prob.dtype == np.float32 and prob.shape == (64, 80)
    assert overlay.shape == (64, 80, 3)
    assert (overlay[outlines(labels)] == (255, 40, 40)).all()

    [row] = read_counts(out)
    assert row["image"] == "cells" and int(row["cells"]) == 3
    assert float(row["mean_cell_area"]) == pytest.approx(disc_area())
    assert float(row["foreground_fraction"]) == pytest.approx(3 * disc_area() / (64 * 80), 1e-5)
    assert (int(row["height"]), int(row["width"])) == (64, 80)
    args = json.loads((out / "predict_args.json").read_text())
    assert args["files"] == [str(path)] and args["predictor"]["tile"] == 64
    assert not (out / "failures.csv").exists()


def test_sixteen_bit_image_predicts_like_its_eight_bit_version(tmp_path: Path) -> None:
    # A high floor and a narrow range, like many 16-bit microscopes: percentiles handle it.
    img16 = discs(dtype=np.uint16, low=27000, high=27000 + 190 * 7)
    write_images(tmp_path / "in16", ["deep.tif"], img16)
    write_images(tmp_path / "in8", ["flat.tif"])
    predictor = brightness_predictor()
    predict_files(predictor, [tmp_path / "in16"], tmp_path / "o16", save_prob=True, progress=False)
    predict_files(predictor, [tmp_path / "in8"], tmp_path / "o8", save_prob=True, progress=False)
    p16 = tifffile.imread(tmp_path / "o16" / "deep_prob.tif")
    p8 = tifffile.imread(tmp_path / "o8" / "flat_prob.tif")
    np.testing.assert_allclose(p16, p8, atol=1e-5)
    assert int(read_counts(tmp_path / "o16")[0]["cells"]) == 3


def test_one_pixel_wide_image(tmp_path: Path) -> None:
    strip = np.zeros((40, 1), np.uint8)
    strip[10:30] = 200
    [path] = write_images(tmp_path / "in", ["strip.tif"], strip)
    result = predict_files(
        brightness_predictor(), [path], tmp_path / "out", min_size=5, progress=False
    )
    assert result.ok
    mask = tifffile.imread(tmp_path / "out" / "strip_mask.tif")
    assert mask.shape == (40, 1)
    np.testing.assert_array_equal(mask[:, 0] == 255, strip[:, 0] == 200)
    assert int(read_counts(tmp_path / "out")[0]["cells"]) == 1


def test_large_image_overlay_is_downsampled(tmp_path: Path) -> None:
    img = np.tile(discs(), (33, 1))  # 2112 x 80: longer side above 2048
    [path] = write_images(tmp_path / "in", ["tall.tif"], img)
    predict_files(
        brightness_predictor(), [path], tmp_path / "out", instances="components", progress=False
    )
    overlay = np.asarray(Image.open(tmp_path / "out" / "tall_overlay.png"))
    assert overlay.shape == (1056, 40, 3)
    assert int(read_counts(tmp_path / "out")[0]["cells"]) == 99


def test_the_run_s_relative_size_filter_applies_to_files(tmp_path: Path) -> None:
    img = discs()
    img[58:61, 70:73] = 200  # a 9-pixel speck: under half the typical cell area
    [path] = write_images(tmp_path / "in", ["specks.tif"], img)
    predictor = brightness_predictor(instances={"method": "components", "min_size": 4,
                                                "min_fraction": 0.5})
    predict_files(predictor, [path], tmp_path / "out", progress=False)
    labels = tifffile.imread(tmp_path / "out" / "specks_labels.tif")
    np.testing.assert_array_equal(labels, predictor.predict_instances(img))
    assert labels.max() == 3 and int(read_counts(tmp_path / "out")[0]["cells"]) == 3


def test_huge_masks_are_labelled_in_bands_with_the_same_cells() -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:300, :200]
    mask = np.zeros((300, 200), dtype=bool)
    for cy, cx in rng.integers(10, 290, (60, 2)):
        mask |= (yy - cy) ** 2 + (xx - cx % 200) ** 2 <= int(rng.integers(16, 64))
    mask[:, 100:103] = True  # a region taller than a band: its crop spans all bands
    whole = label_instances(mask, method="watershed", min_size=16)
    banded = label_in_bands(mask, "watershed", 16, band_pixels=40 * 200)  # 8 bands
    assert banded.max() == whole.max() > 20
    # Same cells up to numbering: each cell's pixels mostly share one label in the other map.
    pairs, counts = np.unique(np.stack([whole.ravel(), banded.ravel()]), axis=1, return_counts=True)
    agreeing = sum(counts[pairs[0] == cell].max() for cell in range(1, whole.max() + 1))
    assert agreeing / np.count_nonzero(whole) > 0.99
    assert set(np.unique(banded)) == set(range(banded.max() + 1))  # ids 0..n, no gaps


def test_corrupt_file_is_reported_and_the_rest_continue(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    write_images(folder, ["a.tif", "c.png"])
    (folder / "b.tif").write_bytes(b"II*\x00 definitely not a tiff")
    out = tmp_path / "out"
    result = predict_files(brightness_predictor(), [folder], out, progress=False)

    assert not result.ok
    [failure] = result.failures
    assert failure.path.endswith("b.tif") and "b.tif" in failure.error
    assert [r["image"] for r in read_counts(out)] == ["a", "c"]
    assert (out / "a_mask.tif").exists() and (out / "c_labels.tif").exists()
    assert not list(out.glob("b_*"))
    assert "b.tif" in (out / "failures.csv").read_text()
    assert "1 failed" in result.summary()


def test_globs_missing_files_and_name_clashes(tmp_path: Path) -> None:
    write_images(tmp_path / "in", ["x.tif", "y.tif", "x.png"])
    result = predict_files(
        brightness_predictor(),
        [str(tmp_path / "in" / "*.tif"), tmp_path / "in" / "x.png", tmp_path / "nope.tif"],
        tmp_path / "out",
        progress=False,
    )
    assert [i.name for i in result.images] == ["x", "y"]
    errors = sorted(f.error for f in result.failures)
    assert len(errors) == 2
    assert any("nope.tif: file not found" in e for e in errors)
    assert any("x.png" in e and "rename" in e for e in errors)


def test_no_images_at_all_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="No image files"):
        predict_files(
            brightness_predictor(),
            [str(tmp_path / "empty" / "*.tif")],
            tmp_path / "out",
            progress=False,
        )


def test_existing_outputs_are_not_overwritten_without_permission(tmp_path: Path) -> None:
    [path] = write_images(tmp_path / "in", ["cells.tif"])
    out = tmp_path / "out"
    predict_files(brightness_predictor(), [path], out, progress=False)
    before = (out / "cells_mask.tif").read_bytes()

    with pytest.raises(RunError, match="--overwrite"):
        predict_files(brightness_predictor(threshold=0.99), [path], out, progress=False)
    assert (out / "cells_mask.tif").read_bytes() == before

    write_images(tmp_path / "in", ["cells.tif"], discs()[:, ::-1].copy())
    predict_files(brightness_predictor(), [path], out, overwrite=True, progress=False)
    mask = tifffile.imread(out / "cells_mask.tif")
    np.testing.assert_array_equal(mask == 255, discs()[:, ::-1] == 200)  # replaced


def test_unknown_instance_method_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="watershed, components, none"):
        predict_files(brightness_predictor(), [tmp_path], tmp_path / "out", instances="blobs")


# --- command line ----------------------------------------------------------------------------


def test_cli_exit_code_reports_a_failed_file(tiny_run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    write_images(folder, ["a.tif", "b.tif"])
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app,
        [
            "predict",
            str(tiny_run),
            str(folder),
            "--out",
            str(out),
            "--no-progress",
            "--tile",
            "32",
            "--instances",
            "components",
        ],
    )
    assert res.exit_code == 1, res.output
    assert "broken.png" in res.output and "2 of 3" in res.output
    assert (out / "a_mask.tif").exists() and (out / "b_overlay.png").exists()
    args = json.loads((out / "predict_args.json").read_text())
    assert args["predictor"]["run"] == str(tiny_run) and args["predictor"]["tile"] == 32

    ok = CliRunner().invoke(
        app,
        [
            "predict",
            str(tiny_run),
            str(folder / "a.tif"),
            "--out",
            str(tmp_path / "o2"),
            "--no-progress",
            "--tta",
            "--save-prob",
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "o2" / "a_prob.tif").exists()


def test_cli_refuses_to_overwrite(tiny_run: Path, tmp_path: Path) -> None:
    [path] = write_images(tmp_path / "in", ["a.tif"])
    argv = ["predict", str(tiny_run), str(path), "--out", str(tmp_path / "out"), "--no-progress"]
    assert CliRunner().invoke(app, argv).exit_code == 0
    again = CliRunner().invoke(app, argv)
    assert isinstance(again.exception, RunError) and "--overwrite" in str(again.exception)
    assert CliRunner().invoke(app, [*argv, "--overwrite"]).exit_code == 0
