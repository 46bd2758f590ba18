"""Reading microscopy images and label maps, normalising them, and writing outputs atomically.

Images come back as float32 arrays of shape ``(H, W, C)`` with the raw intensities of the file
(``C`` is 1 for grayscale, 3 for colour; an alpha channel is dropped). Call :func:`normalize`
to map them to ``[0, 1]``. Labels come back as int32 instance maps ``(H, W)``, 0 = background.

:func:`read_header` gives an image's shape and dtype without decoding its pixels.

Example:
    >>> img = normalize(read_image("images/cell_00001.tif"))      # doctest: +SKIP
    >>> mask = to_binary(read_label("labels/cell_00001_label.tiff"))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from celltune.errors import ImageReadError, OutputError

TIFF_EXTENSIONS = (".tif", ".tiff")
IMAGE_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
_MAX_CHANNELS = 4
# Percentiles are estimated on at most this many pixels: exact enough, and bounded in time.
_PERCENTILE_SAMPLE = 4_000_000
# PIL mode -> (numpy dtype name, channels in the file), for headers read without decoding.
_PIL_MODES: dict[str, tuple[str, int]] = {
    "1": ("bool", 1),
    "L": ("uint8", 1),
    "P": ("uint8", 3),  # palette images are read as RGB
    "LA": ("uint8", 2),
    "RGB": ("uint8", 3),
    "RGBA": ("uint8", 4),
    "CMYK": ("uint8", 4),
    "YCbCr": ("uint8", 3),
    "I": ("int32", 1),
    "I;16": ("uint16", 1),
    "I;16B": ("uint16", 1),
    "I;16L": ("uint16", 1),
    "F": ("float32", 1),
}


@dataclass(frozen=True)
class ImageHeader:
    """Shape and type of an image file, read without decoding its pixels."""

    height: int
    width: int
    channels: int
    dtype: str


def is_image_file(path: str | os.PathLike) -> bool:
    """True when the suffix is one celltune can read."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def read_array(path: str | os.PathLike) -> np.ndarray:
    """Decode a file into a numpy array with its native dtype and shape (no interpretation)."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: file not found.")
    if path.is_dir():
        raise ImageReadError(f"{path}: is a folder, expected an image file.")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: file is empty (0 bytes).")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        raise ImageReadError(
            f"{path}: unsupported file type {suffix!r}; readable types are "
            f"{', '.join(IMAGE_EXTENSIONS)}."
        )
    try:
        if suffix in TIFF_EXTENSIONS:
            return _read_tiff(path)
        return _read_pillow(path)
    except ImageReadError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # decoders raise many types; the user needs the file name
        kind = "TIFF" if suffix in TIFF_EXTENSIONS else suffix.lstrip(".").upper()
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImageReadError(
            f"{path}: cannot be decoded as {kind} ({reason}); the file may be truncated or corrupt."
        ) from exc


@contextlib.contextmanager
def quiet_tifffile() -> Iterator[None]:
    """Silence tifffile's log while reading a file.

    tifffile logs every damaged tag as an ERROR record, which Python prints to stderr when
    logging is not configured; the reader's :class:`ImageReadError` already says what is
    wrong, in one sentence.
    """
    logger = logging.getLogger("tifffile")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _read_tiff(path: Path) -> np.ndarray:
    with quiet_tifffile(), tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise ImageReadError(
                f"{path}: TIFF contains no image data; the file may be truncated or corrupt."
            )
        # Level 0 of the first series is the full-resolution image, also for pyramidal slides.
        return tif.series[0].asarray()


def _read_pillow(path: Path) -> np.ndarray:
    Image.MAX_IMAGE_PIXELS = None  # whole-slide images are legitimate input here
    with Image.open(path) as im:
        im.load()
        if im.mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        elif im.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
            im = im.convert("L" if im.mode == "1" else "RGB")
        return np.asarray(im)


# --- headers (no pixel decoding) -----------------------------------------------------------


def _hwc(shape: tuple[int, ...]) -> tuple[int, int, int] | None:
    """(H, W, C) of a raw array shape by :func:`read_image`'s rules; None for stacks/volumes."""
    dims = tuple(d for d in shape if d != 1) if len(shape) > 2 else tuple(shape)
    if len(dims) == 2:
        return dims[0], dims[1], 1
    if len(dims) == 3:
        first, last = dims[0], dims[-1]
        if last <= _MAX_CHANNELS and (first > _MAX_CHANNELS or first >= last):
            return dims[0], dims[1], last
        if first <= _MAX_CHANNELS:
            return dims[1], dims[2], first
    return None


def read_header(path: str | os.PathLike) -> ImageHeader:
    """Shape, channels and dtype of an image file without decoding its pixels.

    The channel count follows :func:`read_image`'s axis rules, before it drops an alpha
    channel (an RGBA file reports 4).

    Raises:
        ImageReadError: the file is missing or empty, the header cannot be parsed, the image
            is a stack, or a TIFF's pixel data runs past the end of the file (truncated).
    """
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise ImageReadError(f"{path}: file is missing or empty.")
    try:
        if path.suffix.lower() in TIFF_EXTENSIONS:
            shape, dtype = _tiff_header(path)
        else:
            shape, dtype = _pillow_header(path)
    except ImageReadError:
        raise
    except Exception as exc:  # decoders raise many types; the user needs the file name
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImageReadError(f"{path}: header cannot be read ({reason}).") from exc
    hwc = _hwc(shape)
    if hwc is None:
        raise ImageReadError(f"{path}: has shape {shape}, a stack or volume, not a 2-D image.")
    return ImageHeader(hwc[0], hwc[1], hwc[2], dtype)


def _tiff_header(path: Path) -> tuple[tuple[int, ...], str]:
    size = path.stat().st_size
    with quiet_tifffile(), tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise ImageReadError(f"{path}: TIFF contains no image data.")
        series = tif.series[0]
        # Strip/tile offsets are in the header: data ending past EOF means a truncated file.
        for page in series.pages:
            if page is None:
                continue
            ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=False)]
            if ends and max(ends) > size:
                raise ImageReadError(f"{path}: TIFF is truncated (pixel data ends past the file).")
        return tuple(int(d) for d in series.shape), str(series.dtype)


def _pillow_header(path: Path) -> tuple[tuple[int, ...], str]:
    Image.MAX_IMAGE_PIXELS = None  # whole-slide images are legitimate input here
    with Image.open(path) as im:
        width, height = im.size
        dtype, channels = _PIL_MODES.get(im.mode, (im.mode, len(im.getbands())))
        im.verify()  # checks chunk CRCs for PNG without decoding pixels
    shape = (height, width) if channels == 1 else (height, width, channels)
    return shape, dtype


def _as_hwc(array: np.ndarray, path: Path) -> np.ndarray:
    """Make the channel axis explicit and last; reject volumes and stacks."""
    arr = np.squeeze(array) if array.ndim > 2 else array
    if arr.ndim == 2:
        return arr[:, :, None]
    if arr.ndim == 3:
        first, last = arr.shape[0], arr.shape[-1]
        if last <= _MAX_CHANNELS and (first > _MAX_CHANNELS or first >= last):
            return arr
        if first <= _MAX_CHANNELS:
            return np.moveaxis(arr, 0, -1)
    raise ImageReadError(
        f"{path}: has shape {tuple(array.shape)}, a stack or volume; celltune expects a 2-D image "
        "(H×W, H×W×C or C×H×W with at most 4 channels). Save one plane per file."
    )


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as float32 ``(H, W, C)`` with raw intensities (C = 1 or 3).

    Handles tif/tiff (8/16/32-bit integer or float; 2-D, H×W×C or C×H×W), png, jpg and bmp,
    grayscale, RGB and RGBA (alpha is dropped). Two-channel images are kept as they are.

    Raises:
        ImageReadError: the file is missing, empty, corrupt, a stack, or contains NaN/Inf.
    """
    path = Path(path)
    raw = read_array(path)
    if raw.dtype == bool:
        raw = raw.astype(np.uint8)
    if not (np.issubdtype(raw.dtype, np.integer) or np.issubdtype(raw.dtype, np.floating)):
        raise ImageReadError(f"{path}: unsupported pixel type {raw.dtype}.")
    if raw.size == 0:
        raise ImageReadError(f"{path}: image has no pixels (shape {raw.shape}).")
    image = _as_hwc(raw, path)
    if image.shape[-1] == 4:
        image = image[..., :3]
    if np.issubdtype(raw.dtype, np.floating):
        if not np.isfinite(image).all():
            raise ImageReadError(f"{path}: contains NaN or infinite pixel values.")
        # float64 beyond float32's range would silently become infinite below.
        if np.abs(image).max() > np.finfo(np.float32).max:
            raise ImageReadError(f"{path}: pixel values exceed the float32 range.")
    image = image.astype(np.float32, copy=False)
    return np.ascontiguousarray(image)


def read_label(path: str | os.PathLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read an instance label map as int32 ``(H, W)`` (0 = background).

    Args:
        path: label file (any readable format; NeurIPS labels are int16 zlib TIFFs).
        shape: expected ``(H, W)`` of the paired image; a mismatch raises.

    Raises:
        ImageReadError: unreadable, not 2-D, not integer, negative ids, or wrong size.
    """
    path = Path(path)
    raw = np.squeeze(read_array(path))
    if raw.dtype == bool:
        raw = raw.astype(np.uint8)
    if raw.ndim == 3 and raw.shape[-1] in (3, 4) and channels_equal(raw[..., :3]):
        raw = raw[..., 0]  # labels saved as gray-in-RGB
    if raw.ndim != 2:
        raise ImageReadError(
            f"{path}: label has shape {tuple(raw.shape)}; expected a 2-D instance map."
        )
    if np.issubdtype(raw.dtype, np.floating):
        if not np.isfinite(raw).all() or not np.all(raw == np.round(raw)):
            raise ImageReadError(
                f"{path}: label has non-integer values; expected integer instance ids."
            )
    elif not np.issubdtype(raw.dtype, np.integer):
        raise ImageReadError(f"{path}: unsupported label type {raw.dtype}.")
    if raw.size and raw.min() < 0:
        raise ImageReadError(
            f"{path}: label has negative values (min {raw.min()}); expected ids >= 0."
        )
    if raw.size and raw.max() > np.iinfo(np.int32).max:
        raise ImageReadError(f"{path}: label ids exceed the int32 range.")
    if shape is not None and tuple(raw.shape) != tuple(shape):
        raise ImageReadError(
            f"{path}: label size {raw.shape[1]}×{raw.shape[0]} differs from its image's "
            f"{shape[1]}×{shape[0]}."
        )
    return raw.astype(np.int32)


def compact_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ids of an instance label image (increasing; 0, the background, left out) and the
    image renumbered 1..n in that order (0 stays 0, int32).

    For functions that allocate up to the largest id (``scipy.ndimage.find_objects``,
    scikit-image's ``regionprops``) on sparse ids, such as a whole slide's.

    Example:
        >>> compact_labels(np.array([[0, 7_000_000_001], [42, 42]]))
        (array([        42, 7000000001]), array([[0, 2],
               [1, 1]], dtype=int32))
    """
    found, inverse = np.unique(labels, return_inverse=True)
    background = found.size > 0 and found[0] == 0
    compact = inverse.reshape(np.shape(labels)) + (0 if background else 1)
    return (found[1:] if background else found), compact.astype(np.int32, copy=False)


def is_sparse(labels: np.ndarray) -> bool:
    """True when a label image's largest id exceeds its pixel count (see :func:`compact_labels`)."""
    return labels.size > 0 and int(labels.max()) > labels.size


def channels_equal(image: np.ndarray) -> bool:
    """True when every channel of ``(..., C)`` equals the first (gray saved as RGB; C = 1 too)."""
    first = image[..., 0]
    return all(np.array_equal(first, image[..., c]) for c in range(1, image.shape[-1]))


def to_binary(label: np.ndarray) -> np.ndarray:
    """Instance map -> boolean foreground mask."""
    return np.asarray(label) > 0


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """Convert ``(H, W, C)`` to ``channels`` (1: mean of colour channels, 3: repeat gray)."""
    if image.ndim != 3:
        raise ValueError(f"expected (H, W, C), got shape {image.shape}")
    have = image.shape[-1]
    if have == channels:
        return image
    if channels == 1:
        return image.mean(axis=-1, keepdims=True, dtype=np.float32)
    if channels == 3 and have == 1:
        return np.repeat(image, 3, axis=-1)
    if channels == 3 and have == 2:
        return np.concatenate([image, image.mean(axis=-1, keepdims=True)], axis=-1)
    raise ValueError(f"cannot convert {have} channels to {channels}")


def percentiles(channel: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """Percentiles of one channel, estimated on a strided sample for very large images."""
    flat = channel.reshape(-1)
    if flat.size > _PERCENTILE_SAMPLE:
        flat = flat[:: int(np.ceil(flat.size / _PERCENTILE_SAMPLE))]
    lo, hi = np.percentile(flat, [low, high])
    return float(lo), float(hi)


#: Default percentiles of :func:`normalize`; exports state them so consumers can repeat it.
NORMALIZE_LOW, NORMALIZE_HIGH = 1.0, 99.8


def normalize(
    image: np.ndarray,
    low: float = NORMALIZE_LOW,
    high: float = NORMALIZE_HIGH,
    eps: float = 1e-6,
    bounds: list[tuple[float, float]] | None = None,
) -> np.ndarray:
    """Map each channel to ``[0, 1]`` between its ``low`` and ``high`` percentiles, clipped.

    Robust to a high floor (16-bit images whose darkest pixel is 27000) because it uses the
    image's own percentiles, and to constant images, which map to all zeros. When the
    percentile range collapses (sparse bright spots on an empty field) it falls back to
    the full min-max range. ``bounds`` (one ``(lo, hi)`` per channel, from
    :func:`normalize_bounds` of a whole slide) replaces the image's own, so blocks of a slide
    are normalised alike.
    """
    img = np.asarray(image, dtype=np.float32)
    squeeze = img.ndim == 2
    if squeeze:
        img = img[:, :, None]
    bounds = bounds or normalize_bounds(img, low, high, eps)
    out = np.empty_like(img)
    for c, (lo, hi) in enumerate(bounds):
        if hi - lo <= eps * max(1.0, abs(hi)):
            out[..., c] = 0.0
            continue
        np.subtract(img[..., c], lo, out=out[..., c])
        out[..., c] *= 1.0 / (hi - lo)
    np.clip(out, 0.0, 1.0, out=out)
    return out[..., 0] if squeeze else out


def normalize_bounds(
    image: np.ndarray, low: float = NORMALIZE_LOW, high: float = NORMALIZE_HIGH, eps: float = 1e-6
) -> list[tuple[float, float]]:
    """Per channel of ``(H, W, C)``, the ``(lo, hi)`` that :func:`normalize` maps to 0 and 1."""
    img = np.asarray(image, dtype=np.float32)
    img = img[:, :, None] if img.ndim == 2 else img
    bounds = []
    for c in range(img.shape[-1]):
        ch = img[..., c]
        lo, hi = percentiles(ch, low, high)
        if hi - lo <= eps * max(1.0, abs(hi)):
            lo, hi = float(ch.min()), float(ch.max())
        bounds.append((lo, hi))
    return bounds


def is_constant(image: np.ndarray) -> bool:
    """True when every pixel has the same value."""
    return bool(np.ptp(image) == 0) if image.size else True


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only on success.

    A crash or exception leaves any existing ``path`` untouched and removes the temp file.

    Raises:
        OutputError: the folder cannot be created or written, or ``path`` is a folder.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent
        )
    except OSError as exc:
        raise OutputError(
            f"{path}: cannot write the file ({exc.strerror or exc}); choose a writable folder."
        ) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates files readable by the owner only; give them the usual permissions.
        os.chmod(tmp_path, 0o666 & ~_umask())
        try:
            os.replace(tmp_path, path)
        except OSError as exc:  # e.g. the destination is an existing folder
            raise OutputError(f"{path}: cannot replace it ({exc.strerror or exc}).") from exc
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_tiff(path: str | os.PathLike, array: np.ndarray, compression: str = "zlib") -> Path:
    """Write a 2-D or ``(H, W, C)`` array as a compressed TIFF, atomically."""
    arr = np.asarray(array)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    photometric = "rgb" if arr.ndim == 3 and arr.shape[-1] in (3, 4) else "minisblack"
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, arr, compression=compression, photometric=photometric)
    return Path(path)


def write_png(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write a uint8/uint16 gray or RGB(A) array as PNG, atomically."""
    arr = np.asarray(array)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    return Path(path)


def write_image(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write by extension: .tif/.tiff (zlib) or .png."""
    suffix = Path(path).suffix.lower()
    if suffix in TIFF_EXTENSIONS:
        return write_tiff(path, array)
    if suffix == ".png":
        return write_png(path, array)
    raise ValueError(f"{path}: can only write .tif, .tiff or .png")


def warn_if_constant(image: np.ndarray, path: str | os.PathLike) -> None:
    """Warn (not fail) on constant images: legitimate, but they carry no signal."""
    if is_constant(image):
        warnings.warn(f"{path}: image is constant; it will be normalised to zeros.", stacklevel=2)
