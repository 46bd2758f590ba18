"""A dataset fingerprint: what the images and their labels look like, in a few numbers.

Training defaults are derived from it (:mod:`celltune.data.derive`): the validation share
from the image count, the crop from image and object size, the input channels from whether
colour carries information, foreground sampling from how sparse the objects are.

Image headers (size, dtype, channels) are read for every image; pixels and labels are decoded
for at most ``max_images`` images, chosen evenly over the name-sorted list, so the cost is
bounded on large sets. Definitions:

- *equivalent diameter* of an object: ``2 * sqrt(area / pi)``, the diameter of the disc with
  the object's pixel count; an object is every pixel carrying one non-zero id.
- *touching share*: the share of objects with at least one pixel directly above, below, left
  or right of (4-connected to) a pixel of another object.
- *foreground fraction*: the mean over images of the share of labelled (non-zero) pixels.
- *colour*: an image carries colour when its channels differ and are not one signal in a tint
  (a pseudo-coloured fluorescence channel, a warm lamp): some two channels that vary
  correlate below :data:`TINT_CORRELATION`.
- *intensity percentiles*: raw values pooled over the decoded images (an evenly strided
  sample of each image's pixels, every channel).

Example:
    >>> from celltune.data.neurips import discover             # doctest: +SKIP
    >>> fp = fingerprint_for(discover("data/synth").all_samples(), None)   # doctest: +SKIP
    >>> fp.object_diameter, fp.colour                          # doctest: +SKIP
    (14.2, False)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from celltune.data.groups import describe_groups
from celltune.data.samples import Sample
from celltune.errors import CelltuneError
from celltune.io import channels_equal, read_header, read_image, read_label, write_text

#: Changes whenever a definition above changes, so that older cached fingerprints are redone.
FINGERPRINT_VERSION = 1
#: Images decoded for pixel and label statistics, at most.
MAX_IMAGES = 200
#: Intensity percentiles recorded (the ones :func:`celltune.io.normalize` uses, and the median).
PERCENTILES = (1.0, 50.0, 99.8)
#: Channels correlating at least this much are one signal in a tint, not colour.
TINT_CORRELATION = 0.995
#: Share of images that must carry colour for the set to count as a colour set.
COLOUR_SHARE = 0.1
_PIXELS_PER_IMAGE = 1 << 16  # pooled into the intensity percentiles
_CORRELATION_PIXELS = 1 << 18
_BINCOUNT_LIMIT = 1 << 20


@dataclass(frozen=True)
class Fingerprint:
    """Numbers describing a list of labelled images; :meth:`to_dict` / :meth:`from_dict`.

    Sizes are ``(min, median, max)``; label statistics are None when no label could be read.
    """

    images: int
    sampled: int
    height: tuple[int, float, int] | None
    width: tuple[int, float, int] | None
    dtypes: dict[str, int]
    channels: dict[str, int]
    colour_images: int
    intensity: dict[str, float]
    objects: int
    object_diameter: float | None
    object_area: float | None
    objects_per_image: float | None
    foreground_fraction: float | None
    touching_share: float | None
    groups: int
    group_rules: tuple[str, ...] = ()
    unreadable: tuple[str, ...] = field(default_factory=tuple)
    version: int = FINGERPRINT_VERSION

    @property
    def colour_share(self) -> float:
        """Share of the decoded images that carry colour."""
        return self.colour_images / self.sampled if self.sampled else 0.0

    @property
    def colour(self) -> bool:
        """True when at least :data:`COLOUR_SHARE` of the decoded images carry colour."""
        return self.sampled > 0 and self.colour_share >= COLOUR_SHARE

    @property
    def median_side(self) -> float | None:
        """The smaller of the median height and the median width."""
        if self.height is None or self.width is None:
            return None
        return min(self.height[1], self.width[1])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fingerprint:
        values = dict(data)
        for key in ("height", "width"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        for key in ("group_rules", "unreadable"):
            values[key] = tuple(values.get(key) or ())
        return cls(**values)


# --- single images -------------------------------------------------------------------------


def carries_colour(image: np.ndarray) -> bool:
    """True when an ``(H, W, C)`` image's channels hold more than one signal (see module doc)."""
    if image.ndim != 3 or image.shape[-1] < 2 or channels_equal(image):
        return False
    flat = image.reshape(-1, image.shape[-1])
    if len(flat) > _CORRELATION_PIXELS:
        flat = flat[:: math.ceil(len(flat) / _CORRELATION_PIXELS)]
    flat = flat.astype(np.float64)
    varying = flat[:, flat.std(axis=0) > 0]
    if varying.shape[1] < 2:
        return False  # one channel varies, the others are constant: a pure tint
    corr = np.corrcoef(varying, rowvar=False)
    return bool(corr.min() < TINT_CORRELATION)


def object_areas(label: np.ndarray) -> np.ndarray:
    """Pixel count of every object (non-zero id) of an instance map, in id order."""
    flat = label.ravel()
    if flat.size and flat.min() >= 0 and flat.max() < _BINCOUNT_LIMIT:
        counts = np.bincount(flat)[1:]
        return counts[counts > 0]
    ids, counts = np.unique(flat, return_counts=True)
    return counts[ids != 0]


def touching_objects(label: np.ndarray) -> int:
    """How many objects share a 4-connected boundary with another object."""
    found = []
    for a, b in ((label[:, :-1], label[:, 1:]), (label[:-1, :], label[1:, :])):
        contact = (a != b) & (a > 0) & (b > 0)
        found += [a[contact], b[contact]]
    return int(np.unique(np.concatenate(found)).size) if found else 0


def equivalent_diameter(area: float | np.ndarray) -> float | np.ndarray:
    """Diameter of the disc with this area."""
    return 2.0 * np.sqrt(np.asarray(area, dtype=np.float64) / np.pi)


def _strided(values: np.ndarray, limit: int) -> np.ndarray:
    flat = values.reshape(-1)
    return flat[:: math.ceil(flat.size / limit)] if flat.size > limit else flat


# --- a list of samples ---------------------------------------------------------------------


@dataclass
class _Pixels:
    """What the decoded images add up to."""

    colour: int = 0
    intensities: list[np.ndarray] = field(default_factory=list)
    areas: list[np.ndarray] = field(default_factory=list)
    touching: int = 0
    foreground: list[float] = field(default_factory=list)


def sample_indices(n: int, limit: int) -> list[int]:
    """``limit`` indices spread evenly over ``range(n)`` (all of them when n <= limit)."""
    if n <= limit:
        return list(range(n))
    return [int(i) for i in np.linspace(0, n - 1, limit).round()]


def _ordered(samples: Sequence[Sample]) -> list[Sample]:
    return sorted(samples, key=lambda s: (s.name, str(s.image)))


def _add_pixels(sample: Sample, acc: _Pixels) -> None:
    """Add one image and its label to ``acc``; both are read before anything is added."""
    image = read_image(sample.image)
    label = None if sample.label is None else read_label(sample.label, shape=image.shape[:2])
    acc.colour += carries_colour(image)
    acc.intensities.append(_strided(image, _PIXELS_PER_IMAGE))
    if label is None:
        return
    acc.areas.append(object_areas(label))
    acc.touching += touching_objects(label)
    acc.foreground.append(float(np.count_nonzero(label)) / max(1, label.size))


def _span(values: list[int]) -> tuple[int, float, int] | None:
    return (min(values), float(np.median(values)), max(values)) if values else None


def _label_numbers(acc: _Pixels) -> dict[str, Any]:
    if not acc.areas:
        return {"objects": 0, "object_diameter": None, "object_area": None,
                "objects_per_image": None, "foreground_fraction": None, "touching_share": None}
    areas = np.concatenate(acc.areas)
    some = areas.size > 0
    return {
        "objects": int(areas.size),
        "object_diameter": float(np.median(equivalent_diameter(areas))) if some else None,
        "object_area": float(np.median(areas)) if some else None,
        "objects_per_image": float(np.median([a.size for a in acc.areas])),
        "foreground_fraction": float(np.mean(acc.foreground)),
        "touching_share": acc.touching / areas.size if some else None,
    }


def _intensity(acc: _Pixels) -> dict[str, float]:
    if not acc.intensities:
        return {}
    values = np.percentile(np.concatenate(acc.intensities), PERCENTILES)
    return {f"p{p:g}": float(v) for p, v in zip(PERCENTILES, values, strict=True)}


def compute_fingerprint(samples: Sequence[Sample], *, max_images: int = MAX_IMAGES) -> Fingerprint:
    """Fingerprint of ``samples``: headers of all, pixels of at most ``max_images``.

    A file that cannot be read is recorded in ``unreadable`` and left out of the numbers.
    """
    ordered = _ordered(samples)
    unreadable: dict[Path, str] = {}  # one problem per image, the first found
    headers = []
    for sample in ordered:
        try:
            headers.append(read_header(sample.image))
        except CelltuneError as exc:
            unreadable[sample.image] = str(exc)
    acc = _Pixels()
    decoded = 0
    for index in sample_indices(len(ordered), max_images):
        if ordered[index].image in unreadable:
            continue
        try:
            _add_pixels(ordered[index], acc)
            decoded += 1
        except CelltuneError as exc:
            unreadable[ordered[index].image] = str(exc)
    groups, rules = describe_groups(s.name for s in ordered)
    return Fingerprint(
        images=len(ordered), sampled=decoded,
        height=_span([h.height for h in headers]), width=_span([h.width for h in headers]),
        dtypes=dict(sorted(Counter(h.dtype for h in headers).items())),
        channels={str(k): v for k, v in sorted(Counter(h.channels for h in headers).items())},
        colour_images=acc.colour, intensity=_intensity(acc), **_label_numbers(acc),
        groups=groups, group_rules=rules, unreadable=tuple(unreadable.values()),
    )


# --- cache ---------------------------------------------------------------------------------


def cache_key(samples: Sequence[Sample], max_images: int = MAX_IMAGES) -> str:
    """A hash of every file's path, size and modification time (and of the definitions)."""
    entries = []
    for sample in samples:
        for path in (sample.image, sample.label):
            if path is None:
                continue
            try:
                stat = os.stat(path)
                entries.append((str(path), stat.st_size, stat.st_mtime_ns))
            except OSError:
                entries.append((str(path), -1, -1))
    text = json.dumps([FINGERPRINT_VERSION, max_images, sorted(entries)])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _cached(path: Path, key: str) -> Fingerprint | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("key") != key:
            return None
        return Fingerprint.from_dict(data["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a damaged or older cache file is recomputed, never trusted


def fingerprint_for(
    samples: Sequence[Sample],
    cache: str | os.PathLike | None,
    *,
    max_images: int = MAX_IMAGES,
    write: bool = True,
) -> Fingerprint:
    """The fingerprint of ``samples``, read from the JSON file ``cache`` when it is current.

    The cache is current when it was made from the same files (paths, sizes, modification
    times) with the same definitions; otherwise the fingerprint is computed and, with
    ``write``, saved there atomically. ``cache=None`` always computes.
    """
    key = cache_key(samples, max_images)
    path = None if cache is None else Path(cache)
    if path is not None and path.is_file():
        found = _cached(path, key)
        if found is not None:
            return found
    fingerprint = compute_fingerprint(samples, max_images=max_images)
    if path is not None and write:
        write_text(path, json.dumps({"key": key, "fingerprint": fingerprint.to_dict()}, indent=1))
    return fingerprint
