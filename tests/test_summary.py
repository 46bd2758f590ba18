"""Dataset summaries: counts, headers, filters, label statistics, problems, CLI output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from celltune.cli import app
from celltune.data.summary import summarize

JUNMA = Path(__file__).resolve().parents[2] / "shared" / "data" / "neurips_junma"


def _label(shape: tuple[int, int], boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    """An int16 instance map with one rectangle (y0, y1, x0, x1) per cell, ids 1..n."""
    lab = np.zeros(shape, np.int16)
    for i, (y0, y1, x0, x1) in enumerate(boxes, start=1):
        lab[y0:y1, x0:x1] = i
    return lab


def _write_label(path: Path, lab: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, lab, compression="zlib")


def _write_pil(path: Path, arr: np.ndarray, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Training: a.tif (u16 gray 10x12, 2 cells), b.png (RGB 16x8, 0 cells), c.bmp (gray 6x6,
    3 cells), bad.tif (garbage) and d.tif whose label has the wrong size; one unpaired image
    and one unpaired label. Tuning: e.tiff (float32 5x7, 1 cell)."""
    tr, tu = tmp_path / "Training-labeled", tmp_path / "Tuning"
    (tr / "images").mkdir(parents=True)
    tifffile.imwrite(tr / "images" / "a.tif", np.full((10, 12), 30000, np.uint16))
    _write_label(tr / "labels" / "a_label.tiff", _label((10, 12), [(0, 2, 0, 3), (5, 7, 5, 8)]))
    _write_pil(tr / "images" / "b.png", np.zeros((16, 8, 3), np.uint8), "PNG")
    _write_label(tr / "labels" / "b_label.tiff", _label((16, 8), []))
    _write_pil(tr / "images" / "c.bmp", np.zeros((6, 6), np.uint8), "BMP")
    _write_label(
        tr / "labels" / "c_label.tiff", _label((6, 6), [(0, 1, 0, 2), (2, 3, 0, 3), (4, 6, 4, 6)])
    )
    (tr / "images" / "bad.tif").write_bytes(b"this is not a tiff file at all")
    _write_label(tr / "labels" / "bad_label.tiff", _label((4, 4), [(0, 1, 0, 1)]))
    tifffile.imwrite(tr / "images" / "d.tif", np.zeros((9, 9), np.uint8))
    _write_label(tr / "labels" / "d_label.tiff", _label((8, 9), [(0, 1, 0, 1)]))
    tifffile.imwrite(tr / "images" / "lonely.tif", np.zeros((3, 3), np.uint8))
    _write_label(tr / "labels" / "orphan_label.tiff", _label((3, 3), []))
    tu.joinpath("images").mkdir(parents=True)
    tifffile.imwrite(tu / "images" / "e.tiff", np.ones((5, 7), np.float32))
    _write_label(tu / "labels" / "e_label.tiff", _label((5, 7), [(0, 5, 0, 7)]))
    return tmp_path


def test_summary_of_a_synthetic_tree(tree: Path) -> None:
    s = summarize(tree)
    training, tuning = s.splits
    assert (s.layout, training.name, tuning.name) == ("splits", "training", "tuning")
    assert training.images == 5  # a, b, c, bad, d are paired
    assert training.extensions == {".bmp": 1, ".png": 1, ".tif": 3}
    # bad.tif's header cannot be read, so dtypes/channels/sizes count the other four.
    assert training.dtypes == {"uint16": 1, "uint8": 3}
    assert training.channels == {1: 3, 3: 1}
    assert training.height == (6, 16) and training.width == (6, 12)
    assert training.filters["study"].kept == 3
    assert training.filters["study"].dropped == {
        ".bmp is not .tif/.tiff": 1,
        ".png is not .tif/.tiff": 1,
    }
    assert training.filters["all"].kept == 5 and training.filters["all"].dropped == {}

    # Labels read: a (2 cells, 12/120 fg), b (0, 0), c (3 cells, 2+3+4=9/36 fg) and bad's label
    # (1 cell, 1/16; its image is unreadable so the size is not checked); d's label is 8x9
    # for a 9x9 image and is reported instead.
    lab = training.labels
    assert (lab.read, lab.cells_min, lab.cells_median, lab.cells_max) == (4, 0, 1.5, 3)
    assert lab.foreground_mean == pytest.approx((12 / 120 + 0 + 9 / 36 + 1 / 16) / 4)
    assert tuning.labels.cells_max == 1 and tuning.labels.foreground_mean == pytest.approx(1.0)
    assert tuning.dtypes == {"float32": 1} and tuning.height == (5, 5) and tuning.width == (7, 7)

    assert [p.name for p in s.unpaired_images] == ["lonely.tif"]
    assert [p.name for p in s.unpaired_labels] == ["orphan_label.tiff"]
    problems = {p.name: why for p, why in s.unreadable}
    assert set(problems) == {"bad.tif", "d_label.tiff"}
    assert "header cannot be read" in problems["bad.tif"]
    assert "differs from its image" in problems["d_label.tiff"]


def test_to_dict_is_json(tree: Path) -> None:
    s = summarize(tree)
    data = json.loads(json.dumps(s.to_dict()))
    assert data["splits"][0]["channels"] == {"1": 3, "3": 1}
    assert data["splits"][0]["filters"]["study"]["kept"] == 3
    assert data["unreadable"][0]["path"].endswith("bad.tif")


def test_headers_only_skips_labels(tree: Path) -> None:
    s = summarize(tree, read_pixels=False)
    assert all(split.labels is None for split in s.splits)
    assert [p.name for p, _ in s.unreadable] == ["bad.tif"]
    assert s.fingerprint is None and s.derived == {}


def test_summary_holds_the_fingerprint_of_the_training_images(tree: Path) -> None:
    """Tuning is the test set, so the fingerprint covers the five training images; bad.tif and
    d (label of the wrong size) cannot be read, a, b and c are decoded."""
    s = summarize(tree)
    fp = s.fingerprint
    assert (fp.images, fp.sampled, fp.objects, fp.objects_per_image) == (5, 3, 5, 2.0)
    assert fp.channels == {"1": 3, "3": 1} and fp.colour_images == 0  # b.png is black RGB
    assert fp.foreground_fraction == pytest.approx((12 / 120 + 0 + 9 / 36) / 3)
    assert fp.touching_share == 0.0 and len(fp.unreadable) == 2
    assert {k: c.value for k, c in s.derived.items()} == {
        "filter": "all", "val": 2, "channels": 1, "crop": 32, "foreground_sampling": 0.0,
        "resize": None}
    data = json.loads(json.dumps(s.to_dict()))
    assert data["fingerprint"]["images"] == 5
    assert data["derived"]["val"] == {"value": 2, "reason": s.derived["val"].reason}


def _junma_copy(tmp_path: Path) -> Path:
    if not JUNMA.is_dir():
        pytest.skip(f"{JUNMA} is absent (shared development data, not part of the project)")
    root = tmp_path / "junma"
    shutil.copytree(JUNMA, root)
    for p in root.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)  # the shared copy is read-only
    return root


def test_summary_of_junma_with_a_corrupt_file(tmp_path: Path) -> None:
    root = _junma_copy(tmp_path)
    (root / "images" / "cell_09999.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    shutil.copy(
        root / "labels" / "cell_00528_label.tiff", root / "labels" / "cell_09999_label.tiff"
    )

    s = summarize(root)
    (split,) = s.splits
    assert split.images == 4
    assert split.extensions == {".png": 3, ".tif": 1}
    assert split.dtypes == {"uint16": 1, "uint8": 2}
    assert split.channels == {1: 1, 3: 2}
    assert split.height == (200, 1024) and split.width == (200, 1024)
    assert split.filters["study"].kept == 1
    assert [p.name for p, _ in s.unreadable] == ["cell_09999.png"]

    # Label statistics over the three real labels plus the copy of cell_00528's, recomputed.
    labels = [
        tifffile.imread(root / "labels" / f"cell_{n}_label.tiff")
        for n in ("00225", "00528", "00849", "00528")
    ]
    cells = [len(np.unique(lab)) - (0 in lab) for lab in labels]
    assert split.labels.read == 4
    assert (split.labels.cells_min, split.labels.cells_max) == (min(cells), max(cells))
    assert split.labels.cells_median == pytest.approx(float(np.median(cells)))
    assert split.labels.foreground_mean == pytest.approx(
        np.mean([(lab > 0).mean() for lab in labels])
    )


def test_cli_summary_table_and_json(tree: Path) -> None:
    runner = CliRunner(env={"COLUMNS": "200"})
    table = runner.invoke(app, ["data", "summary", str(tree)])
    assert table.exit_code == 0, table.output
    assert "Filters" in table.output and "bad.tif" in table.output
    as_json = runner.invoke(app, ["data", "summary", str(tree), "--json", "--no-pixels"])
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.output)
    assert [s["images"] for s in data["splits"]] == [5, 1]
    assert data["splits"][0]["labels"] is None
