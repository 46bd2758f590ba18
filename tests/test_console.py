"""Terminal tables (celltune.report.console): what `celltune models` and `data summary` print."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from rich.console import Console, RenderableType

from celltune.data.summary import summarize
from celltune.report.console import data_summary_tables, download_bar, models_table

WIDTHS = (80, 60)


def _render(renderables: Sequence[RenderableType], width: int) -> str:
    out = io.StringIO()
    console = Console(width=width, file=out, force_terminal=False)  # like a pipe
    for item in renderables:
        console.print(item)
    return out.getvalue()


def _cells(text: str, column: int) -> list[str]:
    """Column ``column`` of every table body line, stripped."""
    return [line.split("│")[column + 1].strip() for line in text.splitlines() if "│" in line]


@pytest.fixture(scope="module")
def model_rows() -> list[dict]:
    from celltune.models import models_table as rows

    return rows(size=64)


@pytest.mark.parametrize("width", WIDTHS)
def test_model_names_are_never_cut(model_rows: list[dict], width: int) -> None:
    from celltune.models import list_models

    text = _render([models_table(model_rows, 64)], width)
    assert max(len(line) for line in text.splitlines()) <= width
    names = _cells(text, 0)
    for name in list_models():
        assert name in names, f"{name!r} is cut or wrapped at width {width}:\n{text}"
    assert "…" not in "".join(names)


@pytest.mark.parametrize("width", WIDTHS)
def test_model_descriptions_wrap_without_losing_text(model_rows: list[dict], width: int) -> None:
    text = _render([models_table(model_rows, 64)], width)
    about = "".join(_cells(text, 5)).replace(" ", "")
    for row in model_rows:
        assert row["description"].replace(" ", "") in about
    assert "…" not in text


def test_models_table_title_and_numbers(model_rows: list[dict]) -> None:
    table = models_table(model_rows, 64)
    assert table.title.startswith("celltune models (GFLOPs at 1×64×64; 1 multiply-add = 2 FLOPs")
    assert [c.header for c in table.columns] == [
        "name", "params (M)", "GFLOPs", "input size", "study weights", "about"
    ]
    text = _render([table], 200)
    first = model_rows[0]
    assert f"{first['params'] / 1e6:.2f}" in text and f"{first['gflops']:.1f}" in text


def test_a_long_model_name_stays_whole() -> None:
    row = {
        "name": "a_really_long_registered_model_name",
        "params": 1_234_567,
        "gflops": 1.0,
        "input_rule": "any",
        "default_weights": "none",
        "description": "words " * 30,
    }
    for width in WIDTHS:
        assert row["name"] in _cells(_render([models_table([row], 64)], width), 0)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Training: a.tif (u16 gray, 2 cells), b.png (RGB), c.bmp (gray, 3 cells), bad.tif
    (garbage), d.tif (label of the wrong size), an unpaired image and label; Tuning: e.tiff."""
    tr, tu = tmp_path / "Training-labeled", tmp_path / "Tuning"
    for folder in (tr / "images", tr / "labels", tu / "images", tu / "labels"):
        folder.mkdir(parents=True)
    tifffile.imwrite(tr / "images" / "a.tif", np.full((10, 12), 30000, np.uint16))
    Image.fromarray(np.zeros((16, 8, 3), np.uint8)).save(tr / "images" / "b.png")
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(tr / "images" / "c.bmp")
    (tr / "images" / "bad.tif").write_bytes(b"this is not a tiff file at all")
    tifffile.imwrite(tr / "images" / "d.tif", np.zeros((9, 9), np.uint8))
    tifffile.imwrite(tr / "images" / "lonely.tif", np.zeros((3, 3), np.uint8))
    a = np.zeros((10, 12), np.int16)
    a[0:2, 0:3], a[5:7, 5:8] = 1, 2
    c = np.zeros((6, 6), np.int16)
    c[0, 0:2], c[2, 0:3], c[4:6, 4:6] = 1, 2, 3
    bad = np.zeros((4, 4), np.int16)
    bad[0, 0] = 1
    labels = {"a": a, "b": np.zeros((16, 8), np.int16), "c": c, "bad": bad,
              "d": np.ones((8, 9), np.int16), "orphan": np.zeros((3, 3), np.int16)}
    for stem, lab in labels.items():
        tifffile.imwrite(tr / "labels" / f"{stem}_label.tiff", lab, compression="zlib")
    tifffile.imwrite(tu / "images" / "e.tiff", np.ones((5, 7), np.float32))
    tifffile.imwrite(tu / "labels" / "e_label.tiff", np.ones((5, 7), np.int16))
    return tmp_path


@pytest.mark.parametrize("width", [200, *WIDTHS])
def test_data_summary_tables(tree: Path, width: int) -> None:
    text = _render(data_summary_tables(summarize(tree)), width)
    assert max(len(line) for line in text.splitlines()) <= width
    # Foreground (12/120 + 0 + 9/36 + 1/16) / 4 over the four readable labels.
    for expected in ("Filters", "Labels", "Problems", "3/5", "rgb 1", "6-16", "1.5", "0.103",
                     "Fingerprint", "object diameter", "derived from", "proposed",
                     "foreground_sampling"):
        assert expected in text
    if width == 200:  # narrow terminals wrap the counts and shorten file names, as before
        for expected in ("gray 3", "bad.tif", "lonely.tif", "differs from its image"):
            assert expected in text
    assert "No unpaired or unreadable files." not in text


def test_data_summary_without_problems_says_so(tree: Path) -> None:
    root = tree / "Tuning"
    tables = data_summary_tables(summarize(root))
    text = _render(tables, 80)
    assert text.rstrip().endswith("No unpaired or unreadable files.")
    assert "Problems" not in text
    assert "Labels" in text and "1.000" in text


def test_download_bar_counts_resumed_bytes() -> None:
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=False)
    with download_bar("Tuning.zip", 2000, 500, console=console) as advance:
        advance(1500)
    line = out.getvalue()
    assert line.startswith("Tuning.zip ") and "2.0/2.0 kB" in line
