"""celltune.io: every format the NeurIPS data holds, the normaliser, labels, atomic writes."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import tifffile
from PIL import Image

from celltune.errors import ImageReadError
from celltune.io import (
    ImageHeader,
    atomic_path,
    normalize,
    read_header,
    read_image,
    read_label,
    to_binary,
    to_channels,
    write_png,
    write_text,
    write_tiff,
)

RNG = np.random.default_rng(0)


def _gray(dtype, shape=(20, 30)):
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    high = info.max if info else 1.0
    arr = RNG.uniform(0, high, size=shape)
    return arr.astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.float64])
@pytest.mark.parametrize("suffix", [".tif", ".tiff"])
def test_tiff_2d_keeps_raw_values(tmp_path, dtype, suffix):
    arr = _gray(dtype)
    path = tmp_path / f"img{suffix}"
    tifffile.imwrite(path, arr)
    img = read_image(path)
    assert img.dtype == np.float32
    assert img.shape == (20, 30, 1)
    np.testing.assert_allclose(img[..., 0], arr.astype(np.float32))


def test_tiff_hwc_and_chw_give_the_same_hwc(tmp_path):
    rgb = _gray(np.uint16, (16, 24, 3))
    tifffile.imwrite(tmp_path / "hwc.tif", rgb, photometric="rgb")
    tifffile.imwrite(tmp_path / "chw.tif", np.moveaxis(rgb, -1, 0), photometric="minisblack")
    hwc = read_image(tmp_path / "hwc.tif")
    chw = read_image(tmp_path / "chw.tif")
    assert hwc.shape == chw.shape == (16, 24, 3)
    np.testing.assert_array_equal(hwc, chw)
    np.testing.assert_array_equal(hwc, rgb.astype(np.float32))


def test_tiff_singleton_axes_are_squeezed(tmp_path):
    arr = _gray(np.uint8, (1, 1, 12, 10))
    tifffile.imwrite(tmp_path / "x.tif", arr)
    assert read_image(tmp_path / "x.tif").shape == (12, 10, 1)


def test_tiff_stack_is_rejected_with_the_file_name(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, _gray(np.uint16, (7, 12, 10)))
    with pytest.raises(ImageReadError, match=r"stack\.tif.*stack or volume"):
        read_image(path)


@pytest.mark.parametrize(
    ("mode", "suffix", "channels"),
    [("L", ".png", 1), ("RGB", ".png", 3), ("RGBA", ".png", 3), ("I;16", ".png", 1),
     ("RGB", ".bmp", 3), ("L", ".bmp", 1), ("P", ".png", 3)],
)
def test_pillow_formats_are_lossless(tmp_path, mode, suffix, channels):
    if mode == "I;16":
        src = _gray(np.uint16)
        Image.fromarray(src).save(tmp_path / f"x{suffix}")
        expected = src[..., None]
    elif mode == "P":
        pal = Image.fromarray(_gray(np.uint8, (20, 30, 3))).convert("P")
        pal.save(tmp_path / f"x{suffix}")
        expected = np.asarray(pal.convert("RGB"))
    else:
        nch = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
        src = _gray(np.uint8, (20, 30, nch) if nch > 1 else (20, 30))
        Image.fromarray(src, mode=mode).save(tmp_path / f"x{suffix}")
        expected = src[..., :3] if nch > 1 else src[..., None]
    img = read_image(tmp_path / f"x{suffix}")
    assert img.shape == (20, 30, channels)
    np.testing.assert_array_equal(img, expected.astype(np.float32))


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_jpeg_is_read_close_to_the_source(tmp_path, mode):
    src = np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (32, 1))
    if mode == "RGB":
        src = np.stack([src] * 3, axis=-1)
    Image.fromarray(src, mode=mode).save(tmp_path / "x.jpg", quality=95)
    img = read_image(tmp_path / "x.jpg")
    assert img.shape[:2] == (32, 32)
    assert img.shape[2] == (3 if mode == "RGB" else 1)
    assert np.abs(img[..., 0] - (src if mode == "L" else src[..., 0])).mean() < 3


def test_empty_missing_unsupported_and_corrupt_files(tmp_path):
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.tif.*empty \(0 bytes\)"):
        read_image(tmp_path / "empty.tif")
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ImageReadError, match="unsupported file type"):
        read_image(tmp_path / "notes.txt")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(ImageReadError, match=r"bad\.png.*cannot be decoded as PNG"):
        read_image(tmp_path / "bad.png")


def test_truncated_tiff_is_reported(tmp_path):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, _gray(np.uint16, (64, 64)), compression="zlib")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.tif"):
        read_image(path)


def test_header_truncated_tiff_is_caught(tmp_path):
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, RNG.integers(0, 65535, (64, 64), dtype=np.uint16))
    assert read_header(path) == ImageHeader(64, 64, 1, "uint16")
    path.write_bytes(path.read_bytes()[:4000])
    with pytest.raises(ImageReadError, match="truncated"):
        read_header(path)


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((3, 20, 30), (20, 30, 3)), ((20, 30, 4), (20, 30, 4)), ((1, 20, 30), (20, 30, 1))],
)
def test_header_tiff_channel_axis(tmp_path, shape, expected):
    tifffile.imwrite(tmp_path / "x.tif", np.zeros(shape, np.uint8), photometric="minisblack")
    h = read_header(tmp_path / "x.tif")
    assert (h.height, h.width, h.channels, h.dtype) == (*expected, "uint8")


@pytest.mark.parametrize(
    ("mode", "suffix", "dtype"),
    [("L", ".png", "uint8"), ("RGB", ".png", "uint8"), ("I;16", ".png", "uint16"),
     ("L", ".bmp", "uint8"), ("RGB", ".jpg", "uint8")],
)
def test_header_matches_read_image(tmp_path, mode, suffix, dtype):
    arr = np.zeros((12, 7, 3), np.uint8) if mode == "RGB" else np.zeros((12, 7), np.uint8)
    path = tmp_path / f"x{suffix}"
    Image.fromarray(arr).convert(mode).save(path)
    h = read_header(path)
    assert (h.height, h.width, h.channels, h.dtype) == (*read_image(path).shape, dtype)


def test_header_errors_name_the_file(tmp_path):
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    garbage = tmp_path / "bad.png"
    garbage.write_bytes(b"not a png")
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.zeros((5, 8, 9), np.uint8))
    for path, problem in [(empty, "missing or empty"), (garbage, "header cannot be read"),
                          (stack, "stack or volume")]:
        with pytest.raises(ImageReadError, match=problem) as err:
            read_header(path)
        assert str(err.value).startswith(f"{path}: ")


def test_nan_image_is_rejected(tmp_path):
    arr = np.ones((8, 8), np.float32)
    arr[2, 3] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", arr)
    with pytest.raises(ImageReadError, match="NaN or infinite"):
        read_image(tmp_path / "nan.tif")


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.int32, np.uint8, np.int64])
def test_labels_of_any_integer_dtype(tmp_path, dtype):
    lab = np.zeros((10, 12), dtype=dtype)
    lab[2:5, 3:6] = 7
    lab[6:9, 1:3] = 2
    tifffile.imwrite(tmp_path / "l.tiff", lab, compression="zlib")
    out = read_label(tmp_path / "l.tiff", shape=(10, 12))
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, lab.astype(np.int32))
    mask = to_binary(out)
    assert mask.dtype == bool and mask.sum() == 9 + 6


def test_label_errors_name_the_problem(tmp_path):
    neg = np.zeros((4, 4), np.int16)
    neg[0, 0] = -3
    tifffile.imwrite(tmp_path / "neg.tiff", neg)
    with pytest.raises(ImageReadError, match=r"neg\.tiff.*negative"):
        read_label(tmp_path / "neg.tiff")
    frac = np.full((4, 4), 0.5, np.float32)
    tifffile.imwrite(tmp_path / "frac.tiff", frac)
    with pytest.raises(ImageReadError, match="non-integer"):
        read_label(tmp_path / "frac.tiff")
    tifffile.imwrite(tmp_path / "ok.tiff", np.zeros((4, 5), np.uint16))
    with pytest.raises(ImageReadError, match=r"label size 5×4 differs from its image's 6×4"):
        read_label(tmp_path / "ok.tiff", shape=(4, 6))


def test_integral_float_and_gray_rgb_labels_are_accepted(tmp_path):
    lab = np.zeros((6, 6), np.float32)
    lab[1:3, 1:3] = 4
    tifffile.imwrite(tmp_path / "f.tiff", lab)
    assert read_label(tmp_path / "f.tiff").max() == 4
    rgb = np.stack([lab.astype(np.uint8)] * 3, axis=-1)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_label(tmp_path / "rgb.png"), lab.astype(np.int32))


def test_normalize_uses_percentiles_per_channel():
    ramp = np.arange(1000, dtype=np.float32).reshape(10, 100)
    img = np.stack([ramp, 10 * ramp + 5000], axis=-1)
    out = normalize(img, low=1, high=99)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    # Both channels are the same ramp up to an affine map, so they normalise identically.
    np.testing.assert_allclose(out[..., 0], out[..., 1], atol=1e-5)
    lo, hi = np.percentile(ramp, [1, 99])
    np.testing.assert_allclose(out[5, 50, 0], (ramp[5, 50] - lo) / (hi - lo), rtol=1e-5)


def test_normalize_high_floor_and_constant_images():
    rng = np.random.default_rng(1)
    floor = rng.normal(27200, 15, size=(64, 64)).astype(np.float32)
    floor[20:30, 20:30] += 900  # a dim cell on a 16-bit camera offset
    out = normalize(floor)
    assert out[22:28, 22:28].mean() > 0.9
    assert out[:10, :10].mean() < 0.6
    const = np.full((16, 16, 1), 1234.0, np.float32)
    np.testing.assert_array_equal(normalize(const), np.zeros_like(const))


def test_normalize_sparse_spots_falls_back_to_min_max():
    img = np.zeros((100, 100), np.float32)
    img[5, 5] = 100.0  # fewer bright pixels than the top 0.2 percent
    out = normalize(img)
    assert out[5, 5] == 1.0 and out.sum() == 1.0


def test_to_channels():
    rgb = np.stack([np.full((2, 2), v, np.float32) for v in (0, 3, 6)], axis=-1)
    np.testing.assert_array_equal(to_channels(rgb, 1), np.full((2, 2, 1), 3.0))
    gray = np.ones((2, 2, 1), np.float32)
    assert to_channels(gray, 3).shape == (2, 2, 3)


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "result.txt"
    write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.txt"]


def test_written_files_have_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_write_tiff_and_png_round_trip(tmp_path):
    mask = np.zeros((9, 7), bool)
    mask[2:4, 1:5] = True
    write_tiff(tmp_path / "m.tif", mask)
    np.testing.assert_array_equal(read_image(tmp_path / "m.tif")[..., 0], mask.astype(np.float32))
    write_png(tmp_path / "m.png", mask)
    assert read_image(tmp_path / "m.png").max() == 255


def test_real_neurips_samples(shared_data):
    root = shared_data / "neurips_junma"
    expected = {"cell_00225.png": (1024, 1024, 3), "cell_00528.tif": (200, 200, 1),
                "cell_00849.png": (512, 512, 3)}
    for name, shape in expected.items():
        img = read_image(root / "images" / name)
        assert img.shape == shape
        labels = read_label(root / "labels" / f"{name.split('.')[0]}_label.tiff", shape=shape[:2])
        assert labels.max() > 0
        norm = normalize(img)
        assert norm.min() >= 0.0 and norm.max() <= 1.0
    raw = read_image(root / "images" / "cell_00528.tif")
    assert raw.min() >= 27199  # the 16-bit image with a high floor
    norm = normalize(raw)
    assert norm.std() > 0.1  # contrast survives the floor


def test_real_stardist_samples(shared_data):
    root = shared_data / "stardist_dsb2018"
    for img_path in sorted((root / "images").iterdir()):
        img = read_image(img_path)
        labels = read_label(root / "labels" / f"{img_path.stem}_label.tiff", shape=img.shape[:2])
        assert img.shape[2] == 1 and labels.max() > 1
