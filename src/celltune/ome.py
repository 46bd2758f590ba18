"""Whole slides: OME-Zarr (NGFF) and OME-TIFF, read lazily; NGFF label images written back.

Part of the io room (:mod:`celltune.io` reads single image files into memory); this module
never decodes a whole slide. :func:`open_slide` returns a :class:`Slide`: its shape, axes,
physical pixel size and a picklable :class:`SlideSource` that reads any ``(y, x)`` region,
so a worker process can read its own block without the slide ever passing through the
driver.

Supported: OME-Zarr NGFF 0.4 (zarr format 2) and NGFF 0.5 (zarr format 3) images, read and
written; OME-TIFF, plain or pyramidal, read tile by tile through tifffile's zarr store
(level 0 unless asked). Axes may be any of ``t, c, z, y, x``; ``t`` and ``z`` must have one
plane. Pixel sizes come from the NGFF ``scale`` transformations of ``y``/``x`` (units
converted to micrometres) or from the OME-XML ``PhysicalSizeX``/``PhysicalSizeY``.

Labels are written as NGFF ``labels/<name>`` image-label groups, in the format of the image
they belong to. Writing goes into a hidden ``labels/.<name>.partial`` group that is renamed
into place (and listed in ``labels``' metadata) only when complete; local folders only.

Needs the optional ``zarr`` package (``pip install 'celltune[ome]'``).

Example:
    >>> slide = open_slide("slide.ome.zarr")                      # doctest: +SKIP
    >>> slide.shape_yx, slide.pixel_size                          # doctest: +SKIP
    ((16384, 16384), 0.5)
    >>> block = slide.source.read((slice(0, 512), slice(0, 512)))  # (512, 512, C) # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from celltune.errors import DataError, ImageReadError, OutputError
from celltune.io import atomic_path

#: NGFF versions read and written: 0.4 lives in zarr format 2, 0.5 in zarr format 3.
NGFF_VERSIONS = {"0.4": 2, "0.5": 3}
ZARR_SUFFIXES = (".zarr",)
OME_TIFF_SUFFIXES = (".ome.tif", ".ome.tiff")
_TO_MICROMETRE = {
    "micrometer": 1.0, "micron": 1.0, "µm": 1.0, "um": 1.0, "nanometer": 1e-3, "nm": 1e-3,
    "millimeter": 1e3, "mm": 1e3, "centimeter": 1e4, "cm": 1e4, "meter": 1e6, "m": 1e6,
    "angstrom": 1e-4, "Å": 1e-4,
}
Region = tuple[slice, slice]


def _zarr():
    try:
        import zarr
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DataError(
            "Reading OME-Zarr needs the zarr package: pip install 'celltune[ome]'."
        ) from exc
    return zarr


def is_zarr_path(path: str | os.PathLike) -> bool:
    """True for a ``*.zarr`` folder (or name), the NGFF convention."""
    return str(path).rstrip("/").lower().endswith(ZARR_SUFFIXES)


def is_ome_tiff(path: str | os.PathLike) -> bool:
    """True for ``*.ome.tif``/``*.ome.tiff``."""
    return str(path).lower().endswith(OME_TIFF_SUFFIXES)


def is_slide(path: str | os.PathLike) -> bool:
    """True for inputs read lazily by block: OME-Zarr folders and OME-TIFF files."""
    return is_zarr_path(path) or is_ome_tiff(path)


@dataclass(frozen=True)
class SlideSource:
    """Where a slide's pixels are and how to read one region of them (picklable).

    ``axes`` are the stored array's axes; :meth:`read` returns ``(h, w, C)`` raw pixels of
    a ``(rows, columns)`` region, channels last, with one-plane ``t``/``z`` axes dropped.
    """

    path: str
    kind: str  # "zarr" or "tiff"
    array_path: str  # zarr: the dataset's path in the group; tiff: the pyramid level
    axes: str

    def _index(self, region: Region) -> tuple[Any, ...]:
        index: list[Any] = []
        for axis in self.axes:
            if axis == "y":
                index.append(region[0])
            elif axis == "x":
                index.append(region[1])
            elif axis == "c":
                index.append(slice(None))
            else:
                index.append(0)
        return tuple(index)

    def read(self, region: Region) -> np.ndarray:
        """Raw pixels of ``region`` as ``(h, w, C)``, any dtype.

        Raises:
            ImageReadError: the region cannot be read or decoded (names file and region).
        """
        try:
            block = self._read_raw(self._index(region))
        except Exception as exc:  # stores and codecs raise many types; name the chunk
            where = f"rows {region[0].start}:{region[0].stop}, columns {region[1].start}:{region[1].stop}"
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ImageReadError(f"{self.path}: cannot read {where} ({reason}).") from exc
        kept = [a for a in self.axes if a in "cyx"]
        block = np.moveaxis(block, [kept.index("y"), kept.index("x")], [0, 1])
        return block if block.ndim == 3 else block[:, :, None]

    def _read_raw(self, index: tuple[Any, ...]) -> np.ndarray:
        zarr = _zarr()
        if self.kind == "zarr":
            array = zarr.open_array(store=os.path.join(self.path, self.array_path), mode="r")
            return np.asarray(array[index])
        store = tifffile.imread(self.path, aszarr=True, level=int(self.array_path))
        try:
            return np.asarray(zarr.open_array(store=store, mode="r")[index])
        finally:
            store.close()


@dataclass
class Slide:
    """A lazily read whole slide: shape, axes, pixel size (µm, None when unknown), source."""

    path: Path
    shape: tuple[int, ...]
    dtype: str
    axes: str
    pixel_size: float | None
    source: SlideSource
    ngff_version: str | None = None
    levels: int = 1
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def shape_yx(self) -> tuple[int, int]:
        """Height and width of the plane."""
        return self.shape[self.axes.index("y")], self.shape[self.axes.index("x")]

    @property
    def channels(self) -> int:
        """Channels (1 without a ``c`` axis)."""
        return self.shape[self.axes.index("c")] if "c" in self.axes else 1

    def read(self, region: Region | None = None) -> np.ndarray:
        """``(h, w, C)`` raw pixels of a region (the whole plane when None: small slides)."""
        h, w = self.shape_yx
        return self.source.read(region or (slice(0, h), slice(0, w)))


def open_slide(path: str | os.PathLike, level: int = 0) -> Slide:
    """Open an OME-Zarr folder or an OME-TIFF (pyramidal or not) without reading pixels.

    Raises:
        DataError: not a slide, no NGFF ``multiscales`` metadata, an unsupported axis, or
            more than one ``t``/``z`` plane; every message names the path.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: file not found.")
    zarr_like = is_zarr_path(path) or path.is_dir()
    slide = _open_zarr(path, level) if zarr_like else _open_tiff(path, level)
    for axis, size in zip(slide.axes, slide.shape, strict=True):
        if axis in "tz" and size != 1:
            raise DataError(
                f"{path}: has {size} planes along {axis!r}; celltune predicts 2-D planes. "
                "Save one plane per slide."
            )
    if not {"y", "x"} <= set(slide.axes):
        raise DataError(f"{path}: axes {slide.axes!r} lack y and x.")
    return slide


# --- OME-Zarr --------------------------------------------------------------------------------


def ngff_attrs(attrs: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The NGFF part of a group's attributes and its version (0.5 nests it under ``ome``)."""
    if "ome" in attrs and isinstance(attrs["ome"], dict):
        return attrs["ome"], str(attrs["ome"].get("version", "0.5"))
    multiscales = attrs.get("multiscales") or [{}]
    return attrs, multiscales[0].get("version")


def _open_zarr(path: Path, level: int) -> Slide:
    zarr = _zarr()
    try:
        group = zarr.open_group(store=str(path), mode="r")
    except Exception as exc:  # not a zarr group at all
        raise DataError(f"{path}: is not a Zarr group ({type(exc).__name__}).") from exc
    meta, version = ngff_attrs(dict(group.attrs))
    multiscales = meta.get("multiscales")
    if not multiscales:
        raise DataError(
            f"{path}: Zarr has no NGFF 'multiscales' metadata, so its axes and pixel size are "
            "unknown; write it as OME-Zarr (NGFF 0.4 or 0.5), e.g. with ome-zarr's writer."
        )
    ms = multiscales[0]
    axes = "".join(_axis_name(a) for a in ms.get("axes", []))
    datasets = ms.get("datasets", [])
    if not axes or not datasets:
        raise DataError(f"{path}: NGFF 'multiscales' metadata lacks axes or datasets.")
    if not 0 <= level < len(datasets):
        raise DataError(f"{path}: has {len(datasets)} level(s); level {level} does not exist.")
    dataset = datasets[level]
    array = zarr.open_array(store=str(path / dataset["path"]), mode="r")
    scale = _scale(dataset.get("coordinateTransformations", []), len(axes))
    scale *= _scale(ms.get("coordinateTransformations", []), len(axes))
    source = SlideSource(str(path), "zarr", str(dataset["path"]), axes)
    return Slide(
        path, tuple(int(s) for s in array.shape), str(array.dtype), axes,
        _pixel_size(ms.get("axes", []), scale), source, version, len(datasets), meta,
    )


def _axis_name(axis: Any) -> str:
    return str(axis["name"] if isinstance(axis, dict) else axis).lower()


def _scale(transforms: Sequence[dict[str, Any]], n: int) -> np.ndarray:
    scale = np.ones(n)
    for t in transforms:
        if t.get("type") == "scale" and len(t.get("scale", [])) == n:
            scale = scale * np.asarray(t["scale"], dtype=float)
    return scale


def _pixel_size(axes: Sequence[Any], scale: np.ndarray) -> float | None:
    """The ``x`` pixel size in µm (``y`` when ``x`` has none); None without a known unit."""
    sizes = {}
    for axis, s in zip(axes, scale, strict=True):
        if not isinstance(axis, dict) or axis.get("name") not in ("x", "y"):
            continue
        factor = _TO_MICROMETRE.get(str(axis.get("unit", "")).lower())
        if factor is not None:
            sizes[axis["name"]] = float(s) * factor
    return sizes.get("x", sizes.get("y"))


# --- OME-TIFF --------------------------------------------------------------------------------


def _open_tiff(path: Path, level: int) -> Slide:
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise ImageReadError(f"{path}: TIFF contains no image data.")
            series = tif.series[0]
            levels = len(series.levels)
            if not 0 <= level < levels:
                raise DataError(f"{path}: has {levels} level(s); level {level} does not exist.")
            page = series.levels[level]
            shape, dtype = tuple(int(s) for s in page.shape), str(page.dtype)
            axes = series.axes.lower().replace("s", "c").replace("q", "c")
            pixel_size = ome_xml_pixel_size(tif.ome_metadata) if tif.is_ome else None
    except (ImageReadError, DataError):
        raise
    except Exception as exc:
        raise ImageReadError(f"{path}: cannot be read as OME-TIFF ({exc}).") from exc
    if pixel_size is not None and level:
        pixel_size *= shape_ratio(series_shape0(path), shape, axes)
    source = SlideSource(str(path), "tiff", str(level), axes)
    return Slide(path, shape, dtype, axes, pixel_size, source, None, levels)


def series_shape0(path: Path) -> tuple[int, ...]:
    """Full-resolution shape of a TIFF's first series."""
    with tifffile.TiffFile(path) as tif:
        return tuple(int(s) for s in tif.series[0].shape)


def shape_ratio(full: tuple[int, ...], level: tuple[int, ...], axes: str) -> float:
    """How many times smaller a pyramid level is than the full image along ``x``."""
    i = axes.index("x")
    return full[i] / level[i]


def ome_xml_pixel_size(xml: str | None) -> float | None:
    """``PhysicalSizeX`` (else ``Y``) of the first OME-XML ``Pixels`` element, in µm."""
    if not xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] != "Pixels":
            continue
        for axis in ("X", "Y"):
            value = element.get(f"PhysicalSize{axis}")
            unit = element.get(f"PhysicalSize{axis}Unit", "µm")
            factor = _TO_MICROMETRE.get(unit.lower(), _TO_MICROMETRE.get(unit))
            if value is not None and factor is not None:
                return float(value) * factor
        return None
    return None


# --- writing ---------------------------------------------------------------------------------


def _multiscales(
    name: str, axes: str, pixel_size: float | None, version: str, levels: int = 1
) -> dict[str, Any]:
    axis_list = []
    for a in axes:
        entry: dict[str, Any] = {"name": a, "type": {"c": "channel", "t": "time"}.get(a, "space")}
        if a in "zyx" and pixel_size:  # no unit: the size is unknown, not 1 µm
            entry["unit"] = "micrometer"
        axis_list.append(entry)
    datasets = []
    for level in range(levels):
        step = 2.0**level
        scale = [(pixel_size or 1.0) * step if a in "yx" else 1.0 for a in axes]
        datasets.append(
            {"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": scale}]}
        )
    ms: dict[str, Any] = {"name": name, "axes": axis_list, "datasets": datasets}
    if version == "0.4":
        ms["version"] = version
    return ms


def _set_ngff(group: Any, version: str, **entries: Any) -> None:
    """Write NGFF entries in ``version``'s layout (0.5: under ``ome`` with its version)."""
    if version == "0.5":
        ome = dict(group.attrs.get("ome", {}))
        ome.update(version=version, **entries)
        group.attrs["ome"] = ome
    else:
        group.attrs.update(entries)


def _check_version(version: str) -> int:
    if version not in NGFF_VERSIONS:
        raise DataError(
            f"NGFF version {version!r} is not supported; use one of {', '.join(NGFF_VERSIONS)}."
        )
    return NGFF_VERSIONS[version]


def _create_array(group: Any, name: str, shape, chunks, dtype, version: str) -> Any:
    kwargs: dict[str, Any] = {"shape": shape, "chunks": chunks, "dtype": dtype, "fill_value": 0}
    if version == "0.4":
        kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
    else:
        kwargs["dimension_names"] = None
    return group.create_array(name, **kwargs)


def create_ome_zarr(
    path: str | os.PathLike,
    shape: tuple[int, ...],
    dtype: Any,
    *,
    axes: str = "yx",
    pixel_size: float | None = None,
    chunks: tuple[int, ...] | None = None,
    version: str = "0.4",
) -> Any:
    """Create an empty single-level NGFF image at ``path`` and return its level-0 zarr array.

    Fill it block by block (``array[region] = block``); used by tests and benchmarks to make
    synthetic slides larger than memory.
    """
    zarr = _zarr()
    fmt = _check_version(version)
    group = zarr.open_group(store=str(path), mode="w", zarr_format=fmt)
    chunks = chunks or tuple(min(s, 1024) if a in "yx" else 1 for a, s in zip(axes, shape, strict=True))
    array = _create_array(group, "0", shape, chunks, dtype, version)
    _set_ngff(group, version, multiscales=[_multiscales(Path(path).stem, axes, pixel_size, version)])
    return array


def write_ome_zarr(
    path: str | os.PathLike, image: np.ndarray, **options: Any
) -> Path:
    """Write an in-memory image as a single-level NGFF image (see :func:`create_ome_zarr`)."""
    image = np.asarray(image)
    array = create_ome_zarr(path, image.shape, image.dtype, **options)
    array[...] = image
    return Path(path)


@dataclass
class LabelsWriter:
    """An NGFF label image being written into ``root/labels`` under a temporary name.

    ``array`` (YX, or the image's axes with one-plane non-spatial axes) takes blocks from any
    process (:meth:`open_array` by path); :meth:`commit` renames the group into place and
    lists it in ``labels``' metadata; :meth:`discard` removes it.
    """

    root: Path
    name: str
    version: str

    @property
    def partial(self) -> Path:
        """The hidden group written until :meth:`commit`."""
        return self.root / "labels" / f".{self.name}.partial"

    @property
    def final(self) -> Path:
        """``root/labels/<name>``."""
        return self.root / "labels" / self.name

    def open_array(self, mode: str = "r+") -> Any:
        """The label array at level 0 of the partial group."""
        return _zarr().open_array(store=str(self.partial / "0"), mode=mode)

    def commit(self) -> Path:
        """Rename the finished group into place and add it to ``labels``' list."""
        zarr = _zarr()
        if self.final.exists():
            shutil.rmtree(self.final)
        os.replace(self.partial, self.final)
        labels = zarr.open_group(store=str(self.root / "labels"), mode="a")
        meta, _ = ngff_attrs(dict(labels.attrs))
        names = [n for n in meta.get("labels", []) if n != self.name] + [self.name]
        _set_ngff(labels, self.version, labels=names)
        return self.final

    def discard(self) -> None:
        """Remove the partial group."""
        shutil.rmtree(self.partial, ignore_errors=True)


def create_ngff_labels(
    root: str | os.PathLike,
    name: str,
    shape_yx: tuple[int, int],
    *,
    pixel_size: float | None = None,
    chunks: int = 1024,
    dtype: Any = np.int32,
    version: str | None = None,
    resume: bool = False,
) -> LabelsWriter:
    """Start a label image ``root/labels/<name>`` (YX, NGFF ``image-label``) in a Zarr.

    ``root`` may be an existing NGFF image (the labels join it, in its NGFF version) or a
    new folder, which becomes a Zarr group holding only ``labels`` (``version``, default
    0.4). With ``resume`` an existing partial group of the same shape is kept.

    Raises:
        OutputError: ``root`` exists and is not a Zarr group.
    """
    zarr = _zarr()
    root = Path(root)
    if root.exists():
        try:
            group = zarr.open_group(store=str(root), mode="r")
        except Exception as exc:
            raise OutputError(f"{root}: exists and is not a Zarr group; choose another --out.") from exc
        found = ngff_attrs(dict(group.attrs))[1]
        version = version or (found if found in NGFF_VERSIONS else None) or (
            "0.5" if group.metadata.zarr_format == 3 else "0.4")
    version = version or "0.4"
    fmt = _check_version(version)
    writer = LabelsWriter(root, name, version)
    if (resume and (writer.partial / "0").exists()
            and tuple(writer.open_array("r").shape) == tuple(shape_yx)):
        return writer
    writer.discard()
    zarr.open_group(store=str(root), mode="a", zarr_format=fmt)
    zarr.open_group(store=str(root / "labels"), mode="a", zarr_format=fmt)
    group = zarr.open_group(store=str(writer.partial), mode="w", zarr_format=fmt)
    _create_array(group, "0", tuple(shape_yx), (chunks, chunks), dtype, version)
    _set_ngff(
        group, version,
        multiscales=[_multiscales(name, "yx", pixel_size, version)],
        **{"image-label": _image_label(version)},
    )
    return writer


def _image_label(version: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"source": {"image": "../../"}}
    if version == "0.4":
        entry["version"] = version
    return entry


def write_ngff_labels(
    root: str | os.PathLike,
    labels: np.ndarray,
    name: str = "cells",
    pixel_size: float | None = None,
    **options: Any,
) -> Path:
    """Write an in-memory label map as ``root/labels/<name>``, complete or not at all.

    Example:
        >>> write_ngff_labels("slide.ome.zarr", labels, "cells", pixel_size=0.5)  # doctest: +SKIP
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D (Y, X), got shape {labels.shape}.")
    writer = create_ngff_labels(root, name, labels.shape, pixel_size=pixel_size,
                                dtype=labels.dtype, **options)
    try:
        writer.open_array()[...] = labels
    except BaseException:
        writer.discard()
        raise
    return writer.commit()


def write_ome_tiff(
    path: str | os.PathLike, array: np.ndarray, pixel_size: float | None = None
) -> Path:
    """Write a 2-D array as a tiled, zlib-compressed OME-TIFF with its pixel size, atomically."""
    metadata: dict[str, Any] = {"axes": "YX"}
    if pixel_size:
        metadata.update(PhysicalSizeX=pixel_size, PhysicalSizeY=pixel_size,
                        PhysicalSizeXUnit="µm", PhysicalSizeYUnit="µm")
    path = Path(path)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, np.asarray(array), ome=True, metadata=metadata,
                         tile=(512, 512), compression="zlib")
    return path
