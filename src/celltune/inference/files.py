"""The file side of batch prediction: finding the input images, labelling and drawing outputs.

Example:
    >>> paths, failures = collect_inputs(["images/", "more/*.tif"])      # doctest: +SKIP
    >>> labels = label_in_bands(mask, "watershed", min_size=16)          # doctest: +SKIP
    >>> rgb = overlay_outlines(preview(image), labels)                    # doctest: +SKIP
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from celltune.inference.instances import label_instances, label_instances_tiled
from celltune.io import is_image_file, normalize, to_channels

#: Longest side of an overlay PNG; larger images are shrunk by an integer factor.
OVERLAY_MAX_SIDE = 2048
OUTLINE_RGB = (255, 40, 40)
#: Masks above this many pixels are labelled in bands (see :func:`label_in_bands`).
BAND_PIXELS = 4_000_000
_GLOB_CHARS = set("*?[")


@dataclass
class Failure:
    """An input that produced no output, with a one-sentence reason naming it."""

    path: str
    error: str


def collect_inputs(inputs: Sequence[str | os.PathLike]) -> tuple[list[Path], list[Failure]]:
    """Expand files, folders and globs into image paths (sorted per input, duplicates dropped).

    Returns:
        The paths, and a :class:`Failure` for every input that is missing or matches nothing.
    """
    paths: list[Path] = []
    failures: list[Failure] = []
    seen: set[Path] = set()
    for item in inputs:
        found, problem = _expand(str(item))
        if problem:
            failures.append(Failure(str(item), problem))
        for path in found:
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                paths.append(path)
    return paths, failures


def _expand(item: str) -> tuple[list[Path], str | None]:
    path = Path(item)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and _visible_image(p))
        if not files:
            return [], f"{path}: folder holds no image files (.tif, .tiff, .png, .jpg, .bmp)."
        return files, None
    if path.exists():
        return [path], None  # any suffix: an unreadable one is reported when read
    if _GLOB_CHARS & set(item):
        files = sorted(Path(p) for p in glob.glob(item, recursive=True))
        files = [p for p in files if p.is_file() and _visible_image(p)]
        return files, None if files else f"{item}: no image files match this pattern."
    return [], f"{path}: file not found."


def _visible_image(path: Path) -> bool:
    return is_image_file(path) and not path.name.startswith(".")


def assign_names(paths: Sequence[Path]) -> tuple[list[tuple[Path, str]], list[Failure]]:
    """Pair each path with its output stem; a second file with a taken stem is a failure."""
    named: list[tuple[Path, str]] = []
    owner: dict[str, Path] = {}
    failures: list[Failure] = []
    for path in paths:
        name = path.stem
        if name in owner:
            reason = (
                f"{path}: its outputs would be named like those of {owner[name]}; rename one "
                "of them or predict them into separate --out folders."
            )
            failures.append(Failure(str(path), reason))
            continue
        owner[name] = path
        named.append((path, name))
    return named, failures


def label_in_bands(
    mask: np.ndarray, method: str, min_size: int, band_pixels: int = BAND_PIXELS,
    **options: float,
) -> np.ndarray:
    """:func:`~celltune.inference.instances.label_instances` with memory bounded for huge masks.

    The watershed needs about 100 bytes per pixel (7 GB at 8192×8192). Above ``band_pixels``
    the mask is labelled window by window
    (:func:`~celltune.inference.instances.label_instances_tiled`), so memory is bounded by
    one window even when the whole slide is one confluent region. ``options`` (``h``,
    ``smooth``) go to the watershed.
    """

    if method == "components":
        return label_instances(mask, method=method, min_size=min_size)
    if mask.size <= band_pixels:
        return label_instances(mask, method=method, min_size=min_size, **options)
    tile = max(64, int(band_pixels**0.5))
    return label_instances_tiled(
        mask, method=method, min_size=min_size, tile=tile, margin=min(128, tile // 2),
        **options,
    )


def shrink_step(height: int, width: int, max_side: int = OVERLAY_MAX_SIDE) -> int:
    """Integer factor that brings the longer side to at most ``max_side``."""
    return max(1, math.ceil(max(height, width) / max_side))


def preview(image: np.ndarray) -> np.ndarray:
    """The image shrunk by striding to at most OVERLAY_MAX_SIDE, as RGB uint8."""
    step = shrink_step(*image.shape[:2])
    small = to_channels(np.ascontiguousarray(image[::step, ::step]), 3)
    return (normalize(small) * 255.0 + 0.5).astype(np.uint8)


def outlines(labels: np.ndarray) -> np.ndarray:
    """Pixels of a cell whose 4-neighbour belongs to another cell or the background."""
    padded = np.pad(labels, 1)
    centre = padded[1:-1, 1:-1]
    edge = np.zeros(labels.shape, dtype=bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        edge |= padded[dy : dy + labels.shape[0], dx : dx + labels.shape[1]] != centre
    return edge & (centre > 0)


def overlay_outlines(background: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Draw outlines of full-resolution ``labels`` on its :func:`preview` ``background``."""
    step = shrink_step(*labels.shape)
    small = labels[::step, ::step]
    rgb = background.copy()
    rgb[outlines(small)] = OUTLINE_RGB
    return rgb
