"""Fuzz tests (hypothesis): readers and metrics fail only with their documented error types.

- ``celltune.io`` readers on random bytes, on valid files with random damage, and on random
  arrays of every dtype and shape tifffile can write: a result of the documented form, or
  :class:`~celltune.errors.ImageReadError`; nothing else, and no hang.
- Metrics on random arrays and counts: a result within its range, or ``ValueError``.

Runs are derandomised (the same examples every time, so CI is stable) with a deadline per
example that only a hang would exceed.
"""

from __future__ import annotations

import io as stdio
import math
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from celltune.errors import ImageReadError
from celltune.evaluation.metrics import (
    Counts,
    confusion,
    confusion_batch,
    dice,
    instance_f1,
    instance_scores,
    iou,
    pooled_dice,
)
from celltune.evaluation.threshold import sweep
from celltune.io import read_image, read_label

# An overflow or invalid-value warning means garbage passed silently; fail on it.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

FUZZ = settings(
    max_examples=150,
    deadline=timedelta(seconds=5),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SUFFIXES = [".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp"]
MAGIC = [b"", b"II*\x00", b"MM\x00*", b"II+\x00", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"BM"]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def check_image(path: Path) -> None:
    """read_image returns float32 (H, W, C) with C <= 3 and finite values, or ImageReadError."""
    try:
        image = read_image(path)
    except ImageReadError as exc:
        assert str(path) in str(exc)
        return
    assert image.dtype == np.float32 and image.ndim == 3
    assert image.shape[-1] in (1, 2, 3) and image.size > 0
    assert np.isfinite(image).all()


def check_label(path: Path) -> None:
    """read_label returns non-negative int32 (H, W), or ImageReadError."""
    try:
        label = read_label(path)
    except ImageReadError as exc:
        assert str(path) in str(exc)
        return
    assert label.dtype == np.int32 and label.ndim == 2
    assert label.size == 0 or label.min() >= 0


def _valid_files() -> dict[str, bytes]:
    """Small valid files of each format, to be damaged by the fuzzer."""
    rng = np.random.default_rng(0)
    gray16 = rng.integers(0, 65535, (24, 20), dtype=np.uint16)
    rgb8 = rng.integers(0, 255, (16, 18, 3), dtype=np.uint8)
    files = {}
    buf = stdio.BytesIO()
    tifffile.imwrite(buf, gray16, compression="zlib")
    files[".tif"] = buf.getvalue()
    buf = stdio.BytesIO()
    tifffile.imwrite(buf, rgb8, photometric="rgb")
    files[".tiff"] = buf.getvalue()
    for suffix, fmt in ((".png", "PNG"), (".jpg", "JPEG"), (".bmp", "BMP")):
        buf = stdio.BytesIO()
        Image.fromarray(rgb8).save(buf, format=fmt)
        files[suffix] = buf.getvalue()
    return files


VALID = _valid_files()


@FUZZ
@given(
    suffix=st.sampled_from(SUFFIXES), magic=st.sampled_from(MAGIC), body=st.binary(max_size=2048)
)
def test_readers_on_random_bytes(scratch: Path, suffix: str, magic: bytes, body: bytes) -> None:
    path = scratch / f"random{suffix}"
    path.write_bytes(magic + body)
    check_image(path)
    check_label(path)


@FUZZ
@given(
    suffix=st.sampled_from(sorted(VALID)),
    cut=st.floats(0.0, 1.0),
    flips=st.lists(
        st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 255)), max_size=8
    ),
)
def test_readers_on_damaged_files(
    scratch: Path, suffix: str, cut: float, flips: list[tuple[float, int]]
) -> None:
    data = bytearray(VALID[suffix])
    for where, value in flips:
        data[int(where * len(data))] = value
    data = data[: max(1, int(cut * len(data)))] if cut < 1 else data
    path = scratch / f"damaged{suffix}"
    path.write_bytes(bytes(data))
    check_image(path)
    check_label(path)


DTYPES = [
    np.uint8,
    np.int8,
    np.uint16,
    np.int16,
    np.uint32,
    np.int32,
    np.int64,
    np.float16,
    np.float32,
    np.float64,
    np.bool_,
    np.complex64,
]


@st.composite
def tiff_arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = tuple(draw(st.lists(st.integers(1, 7), min_size=1, max_size=5)))
    if dtype.kind == "f":
        elements = st.floats(allow_nan=True, allow_infinity=True, width=dtype.itemsize * 8)
    elif dtype.kind == "c":
        elements = st.complex_numbers(max_magnitude=10, width=64)
    else:
        elements = None
    return draw(hnp.arrays(dtype, shape, elements=elements))


@FUZZ
@given(array=tiff_arrays(), suffix=st.sampled_from([".tif", ".tiff"]))
def test_readers_on_random_tiff_arrays(scratch: Path, array: np.ndarray, suffix: str) -> None:
    path = scratch / f"array{suffix}"
    try:
        tifffile.imwrite(path, array)
    except Exception:  # shapes/dtypes tifffile itself cannot store (its errors, not ours)
        return
    check_image(path)
    check_label(path)


@FUZZ
@given(
    array=hnp.arrays(np.uint8, hnp.array_shapes(min_dims=2, max_dims=3, max_side=9)),
    suffix=st.sampled_from([".png", ".bmp"]),
)
def test_readers_on_random_pillow_arrays(scratch: Path, array: np.ndarray, suffix: str) -> None:
    if array.ndim == 3 and array.shape[-1] not in (3, 4):
        array = array[..., 0]
    path = scratch / f"pillow{suffix}"
    try:
        Image.fromarray(array).save(path)
    except (ValueError, TypeError, OSError):  # modes the format cannot hold
        return
    check_image(path)
    check_label(path)


# --- metrics -----------------------------------------------------------------------------------


MASK_VALUES = st.sampled_from([0, 1, 0, 1, 2, -1, 0.5, math.nan])
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6)


@st.composite
def masks(draw: st.DrawFn, shape: tuple[int, ...] | None = None) -> np.ndarray:
    shape = draw(SHAPES) if shape is None else shape
    kind = draw(st.sampled_from(["bool", "int", "float"]))
    if kind == "bool":
        return draw(hnp.arrays(np.bool_, shape))
    dtype = np.int64 if kind == "int" else np.float64
    values = MASK_VALUES if kind == "float" else st.sampled_from([0, 1, 1, 0, 2, -3])
    return draw(hnp.arrays(dtype, shape, elements=values))


@FUZZ
@given(data=st.data())
def test_confusion_on_random_arrays(data: st.DataObject) -> None:
    pred = data.draw(masks())
    same = data.draw(st.booleans())
    gt = data.draw(masks(pred.shape if same else None))
    try:
        counts = confusion(pred, gt)
    except ValueError:
        return
    assert isinstance(counts, Counts) and min(counts) >= 0 and sum(counts) == pred.size
    for score in (dice(counts), iou(counts)):
        assert 0.0 <= score <= 1.0
    try:
        batch = confusion_batch(pred, gt)
    except ValueError:
        return
    assert batch.sum() == pred.size and (batch >= 0).all()


@FUZZ
@given(
    counts=hnp.arrays(
        np.int64,
        hnp.array_shapes(min_dims=0, max_dims=3, max_side=5),
        elements=st.integers(0, 10**6),
    )
)
def test_scores_on_random_counts(counts: np.ndarray) -> None:
    try:
        values = np.asarray(dice(counts))
    except ValueError:
        assert counts.ndim == 0 or counts.shape[-1] != 4
        return
    assert values.shape == counts.shape[:-1]
    assert ((values >= 0) & (values <= 1)).all()
    assert ((np.asarray(iou(counts)) >= 0) & (np.asarray(iou(counts)) <= values + 1e-12)).all()
    assert 0.0 <= pooled_dice(counts) <= 1.0


@st.composite
def label_maps(draw: st.DrawFn, shape: tuple[int, ...] | None = None) -> np.ndarray:
    shape = shape or draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=20))
    dtype = draw(st.sampled_from([np.int32, np.uint16, np.int64, np.float32, np.bool_]))
    if dtype == np.bool_:
        return draw(hnp.arrays(dtype, shape))
    low = 0 if np.dtype(dtype).kind == "u" else -1
    return draw(hnp.arrays(dtype, shape, elements=st.integers(low, 6).map(dtype.__call__)))


@FUZZ
@given(data=st.data())
def test_instance_scores_on_random_labels(data: st.DataObject) -> None:
    gt = data.draw(label_maps())
    pred = data.draw(label_maps(gt.shape if data.draw(st.booleans()) else None))
    try:
        scores = instance_scores(gt, pred)
        f1 = instance_f1(gt, pred)
    except ValueError:
        return
    assert all(0.0 <= v <= 1.0 for v in scores["f1"] + scores["precision"] + scores["recall"])
    assert f1 == scores["f1"][0]
    assert min(scores["tp"]) >= 0 and max(scores["tp"]) <= min(scores["n_gt"], scores["n_pred"])


PROB_VALUES = st.one_of(st.floats(0.0, 1.0), st.sampled_from([-0.5, 1.5, math.nan, math.inf]))


@FUZZ
@given(
    data=st.data(),
    n=st.integers(0, 3),
    start=st.floats(-0.1, 1.1),
    width=st.floats(-0.2, 1.0),
    step=st.floats(0.0, 0.5),
    refine=st.booleans(),
)
def test_threshold_sweep_on_random_maps(
    data: st.DataObject, n: int, start: float, width: float, step: float, refine: bool
) -> None:
    probs, truths = [], []
    for _ in range(n):
        shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=8))
        probs.append(data.draw(hnp.arrays(np.float64, shape, elements=PROB_VALUES)))
        truths.append(data.draw(masks(shape if data.draw(st.booleans()) else None)))
    try:
        result = sweep(probs, truths, start=start, stop=start + width, step=step, refine=refine)
    except ValueError:
        return
    # Thresholds snap to multiples of 1 / bins; refinement looks one step beyond the grid.
    slack = 1.0 / result.bins + (step if refine else 0.0)
    assert start - slack <= result.best_threshold <= start + width + step + slack
    assert 0.0 <= result.best_threshold <= 1.0
    assert 0.0 <= result.best_dice <= 1.0 and result.n_images == n
    assert len(result.thresholds) == len(result.dice)
