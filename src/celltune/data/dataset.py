"""Torch datasets: random training crops and whole images for validation and test.

Images are read with :mod:`celltune.io`, converted to the requested number of channels,
normalised to ``[0, 1]`` and optionally rescaled; :class:`ImageCache` keeps those decoded
arrays in memory so that an epoch after the first costs only cropping and augmentation. A
target that needs the whole label map (the ``distance`` head's distance map, see
:func:`celltune.data.targets.target_plane`) gets its plane computed once per image, cached
beside the image, and cut and augmented together with the labels.

Determinism: everything random about training item ``i`` in epoch ``e`` (which image, where
the crop lies, every augmentation parameter) is drawn from ``(seed, e, i)`` alone. The same
item is therefore identical in any process, any DataLoader worker and after a resume. With
persistent workers a ``set_epoch`` on the dataset in the main process never reaches the
workers' copies, so train with ``DataLoader(ds, sampler=ds.sampler())``: the
:class:`EpochSampler` lives in the main process (Lightning calls its ``set_epoch`` each epoch)
and hands ``(epoch, i)`` to the workers with every index.

Example:
    >>> ds = CropDataset(samples, crop=256, augment="aug2", seed=0)  # doctest: +SKIP
    >>> loader = DataLoader(ds, batch_size=8, sampler=ds.sampler(), num_workers=2)  # doctest: +SKIP
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from celltune.data.augment import build_augmentation
from celltune.data.samples import Sample
from celltune.data.targets import make_target, target_plane
from celltune.errors import ConfigError, DataError
from celltune.io import normalize, read_image, read_label, to_channels

Pair = tuple[np.ndarray, np.ndarray | None]

DEFAULT_CACHE_BYTES = 4 * 1024**3
# Foreground pixels remembered per image for foreground-centred crops; a strided subset keeps
# memory bounded on large images while still covering every region of the image.
_MAX_FOREGROUND_POINTS = 4096
# Tags that give the per-item and per-epoch-order random streams distinct seed sequences.
_ITEM_STREAM, _ORDER_STREAM = 1, 2
_SEED_MASK = 2**63 - 1


def load_pair(sample: Sample, *, channels: int = 1, resize: float | None = None) -> Pair:
    """Read one image and its labels.

    Args:
        sample: image path and label path (or ``None``).
        channels: 1 (grayscale) or 3 (RGB); see :func:`celltune.io.to_channels`.
        resize: optional scale factor; bilinear for the image, nearest for the labels.

    Returns:
        ``(image, labels)``: float32 ``(H, W, C)`` in ``[0, 1]`` and int32 ``(H, W)``, or
        ``None`` for labels when ``sample.label`` is ``None``.

    Raises:
        ImageReadError: a file is unreadable, or the label size differs from the image's.
        ConfigError: ``channels`` or ``resize`` is invalid.
    """
    _check_options(channels, resize)
    raw = read_image(sample.image)
    image = normalize(to_channels(raw, channels))
    labels = None if sample.label is None else read_label(sample.label, shape=raw.shape[:2])
    if resize is not None and resize != 1.0:
        image, labels = _resize_image(image, resize), _resize_labels(labels, resize)
    return image, labels


def _check_options(channels: int, resize: float | None) -> None:
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {channels!r}.")
    if resize is not None and not resize > 0:
        raise ConfigError(f"resize must be a positive scale factor, got {resize!r}.")


def _scaled_shape(shape: tuple[int, ...], factor: float) -> tuple[int, int]:
    return max(1, round(shape[0] * factor)), max(1, round(shape[1] * factor))


def _resize_image(image: np.ndarray, factor: float) -> np.ndarray:
    h, w = _scaled_shape(image.shape, factor)
    out = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    return out.reshape(h, w, image.shape[-1])  # cv2 drops a single channel axis


def _resize_labels(labels: np.ndarray | None, factor: float) -> np.ndarray | None:
    if labels is None:
        return None
    h, w = _scaled_shape(labels.shape, factor)
    # Nearest neighbour by index arithmetic: exact for any id range, unlike float warps.
    return np.ascontiguousarray(
        labels[_source_index(h, labels.shape[0])[:, None], _source_index(w, labels.shape[1])]
    )


def _source_index(n_out: int, n_in: int) -> np.ndarray:
    """Source pixel under the centre of each output pixel."""
    return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.intp), n_in - 1)


class ImageCache:
    """In-memory LRU cache of :func:`load_pair` results, bounded by ``max_bytes``.

    Cached arrays are read-only and the same objects are returned on every hit. A lock makes
    it safe for threads; DataLoader worker processes each hold their own copy (call
    :meth:`CropDataset.preload` before the loader forks to share one filled copy between them).
    A pair larger than ``max_bytes`` is returned but not kept.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = int(max_bytes)
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple[Any, ...], tuple[np.ndarray | None, ...]] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()

    def get(self, sample: Sample, channels: int = 1, resize: float | None = None) -> Pair:
        """Return the cached pair for ``sample``, loading (and caching) it on a miss."""
        key = (str(sample.image), str(sample.label), channels, resize)
        with self._lock:
            if key in self._entries:
                self.hits += 1
                self._entries.move_to_end(key)
                return self._entries[key]
            self.misses += 1
        pair = load_pair(sample, channels=channels, resize=resize)
        for array in pair:
            if array is not None:
                array.flags.writeable = False  # shared by every later caller
        self._store(key, pair)
        return pair

    def plane(
        self,
        sample: Sample,
        channels: int,
        resize: float | None,
        name: str,
        compute: Callable[[np.ndarray], np.ndarray],
    ) -> np.ndarray:
        """``compute(labels)`` of the sample's (cached) labels, cached beside its pair.

        ``name`` tells planes apart (a target kind); the plane is read-only, like the pair.
        """
        key = (str(sample.image), str(sample.label), channels, resize, name)
        with self._lock:
            if key in self._entries:
                self.hits += 1
                self._entries.move_to_end(key)
                return self._entries[key][0]
        labels = self.get(sample, channels, resize)[1]
        plane = compute(labels)
        plane.flags.writeable = False
        self._store(key, (plane,))
        return plane

    def _store(self, key: tuple[Any, ...], pair: tuple[np.ndarray | None, ...]) -> None:
        size = sum(a.nbytes for a in pair if a is not None)
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = pair
            self._nbytes += size
            while self._nbytes > self.max_bytes:
                _, old = self._entries.popitem(last=False)
                self._nbytes -= sum(a.nbytes for a in old if a is not None)

    @property
    def nbytes(self) -> int:
        """Bytes held by cached arrays."""
        return self._nbytes

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._nbytes = 0

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]  # locks cannot be pickled; spawned workers get a fresh one
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def _make_cache(cache: bool | ImageCache) -> ImageCache | None:
    if isinstance(cache, ImageCache):
        return cache
    return ImageCache() if cache else None


class _PairSource:
    """Shared by both datasets: samples, load options and the optional cache."""

    def __init__(
        self,
        samples: Sequence[Sample],
        channels: int,
        resize: float | None,
        cache: bool | ImageCache,
        target: str,
    ) -> None:
        _check_options(channels, resize)
        # Fails early on an unknown target kind.
        self._plane_fn = target_plane(target)
        self.samples = list(samples)
        self.channels = channels
        self.resize = resize
        self.target = target
        self.cache = _make_cache(cache)

    def load(self, index: int) -> Pair:
        sample = self.samples[index]
        if self.cache is not None:
            return self.cache.get(sample, self.channels, self.resize)
        return load_pair(sample, channels=self.channels, resize=self.resize)

    def load_plane(self, index: int, labels: np.ndarray | None) -> np.ndarray | None:
        """The target's whole-image plane for sample ``index`` (its ``labels`` as loaded), or
        None when the target needs none; cached beside the image when there is a cache."""
        if self._plane_fn is None or labels is None:
            return None
        if self.cache is None:
            return self._plane_fn(labels)
        return self.cache.plane(
            self.samples[index], self.channels, self.resize, self.target, self._plane_fn
        )

    def preload(self) -> None:
        """Load every sample (and its plane) into the cache now, before workers fork."""
        for i in range(len(self.samples)):
            self.load_plane(i, self.load(i)[1])


def _to_tensor_image(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


class CropDataset(_PairSource, Dataset):
    """Random square crops for training, reproducible from ``(seed, epoch, index)``.

    Images smaller than ``crop`` are placed at a random offset inside a zero-filled window:
    zeros in the image and 0 (background) in the mask, so the padded area is a consistent pair.
    Each epoch visits the samples in a fresh random order (every sample once per ``len(samples)``
    items), so batches are shuffled even when read sequentially.

    Args:
        samples: training samples; every one needs a label file.
        crop: side of the square crop in pixels.
        channels: 1 or 3 input channels.
        augment: augmentation preset name (``none``, ``aug1``, ``aug2``) or ``None``.
        samples_per_epoch: items per epoch; default one per sample.
        seed: base seed of every random choice.
        foreground_sampling: probability that a crop is centred on a random foreground pixel.
        resize: optional scale factor applied on load.
        cache: ``True`` for a private :class:`ImageCache`, an instance to share one, or ``False``.
        target: ``binary``, ``two_class``, ``three_class`` or ``distance`` (see
            :mod:`celltune.data.targets`).

    Items are ``{"image": float32 (C, crop, crop), "mask": target tensor}``.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        *,
        crop: int = 256,
        channels: int = 1,
        augment: str | None = "aug1",
        samples_per_epoch: int | None = None,
        seed: int = 0,
        foreground_sampling: float = 0.0,
        resize: float | None = None,
        cache: bool | ImageCache = True,
        target: str = "binary",
    ) -> None:
        super().__init__(samples, channels, resize, cache, target)
        _check_training_samples(self.samples)
        if crop < 1:
            raise ConfigError(f"crop must be a positive number of pixels, got {crop!r}.")
        if not 0.0 <= foreground_sampling <= 1.0:
            raise ConfigError(
                f"foreground_sampling must lie in [0, 1], got {foreground_sampling!r}."
            )
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise ConfigError(f"samples_per_epoch must be at least 1, got {samples_per_epoch!r}.")
        self.crop = int(crop)
        self.augment = build_augmentation(augment or "none")
        self.samples_per_epoch = samples_per_epoch
        self.seed = int(seed) & _SEED_MASK
        self.foreground_sampling = float(foreground_sampling)
        self.epoch = 0
        self._foreground: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.samples_per_epoch or len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch used for plain integer indices."""
        self.epoch = int(epoch)

    def sampler(self, shard: bool = False) -> EpochSampler:
        """A sampler yielding ``(epoch, i)``; pass it to the DataLoader for exact replay.

        ``shard=True`` splits the items between distributed processes (see
        :class:`EpochSampler`); use it with ``Trainer(use_distributed_sampler=False)``.
        """
        return EpochSampler(len(self), shard=shard)

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, i = (
            (int(index[0]), int(index[1])) if isinstance(index, tuple) else (self.epoch, int(index))
        )
        if not 0 <= i < len(self):
            raise IndexError(f"item {i} out of range for {len(self)} items")
        rng = np.random.default_rng([self.seed, _ITEM_STREAM, epoch, i])
        augment_seed = int(rng.integers(2**63))
        sample_index = self._sample_index(epoch, i)
        image, labels = self.load(sample_index)
        plane = self.load_plane(sample_index, labels)
        y0, x0 = self._corner(rng, sample_index, labels)
        image = _cut_window(image, y0, x0, self.crop)
        labels = _cut_window(labels, y0, x0, self.crop)
        if plane is not None:
            plane = _cut_window(plane, y0, x0, self.crop)
        if self.augment is not None and plane is not None:
            image, labels, plane = self.augment.with_plane(image, labels, plane, augment_seed)
        elif self.augment is not None:
            image, labels = self.augment(image, labels, seed=augment_seed)
        return {"image": _to_tensor_image(image), "mask": make_target(labels, self.target, plane)}

    def _sample_index(self, epoch: int, i: int) -> int:
        n = len(self.samples)
        cycle, position = divmod(i, n)
        order = np.random.default_rng([self.seed, _ORDER_STREAM, epoch, cycle]).permutation(n)
        return int(order[position])

    def _corner(
        self, rng: np.random.Generator, sample_index: int, labels: np.ndarray
    ) -> tuple[int, int]:
        """Top-left corner of the crop; a negative offset places a small image inside it."""
        h, w = labels.shape
        lo_y, hi_y = min(0, h - self.crop), max(0, h - self.crop)
        lo_x, hi_x = min(0, w - self.crop), max(0, w - self.crop)
        uniform = int(rng.integers(lo_y, hi_y + 1)), int(rng.integers(lo_x, hi_x + 1))
        on_foreground, pick = rng.random() < self.foreground_sampling, rng.random()
        if not on_foreground:
            return uniform
        points = self._foreground_points(sample_index, labels)
        if not len(points):  # an empty label map has nothing to centre on
            return uniform
        fy, fx = divmod(int(points[int(pick * len(points))]), w)
        half = self.crop // 2
        return int(np.clip(fy - half, lo_y, hi_y)), int(np.clip(fx - half, lo_x, hi_x))

    def _foreground_points(self, sample_index: int, labels: np.ndarray) -> np.ndarray:
        if sample_index not in self._foreground:
            flat = np.flatnonzero(labels)
            stride = max(1, -(-flat.size // _MAX_FOREGROUND_POINTS))
            self._foreground[sample_index] = flat[::stride].copy()
        return self._foreground[sample_index]


def _check_training_samples(samples: list[Sample]) -> None:
    if not samples:
        raise DataError("No training samples were given; check the dataset root and filter.")
    for sample in samples:
        if sample.label is None:
            raise DataError(f"{sample.image}: has no label file; training crops need labels.")


def _cut_window(array: np.ndarray, y0: int, x0: int, size: int) -> np.ndarray:
    """Copy the ``size``×``size`` window at ``(y0, x0)``; parts outside the array are 0."""
    h, w = array.shape[:2]
    out = np.zeros((size, size, *array.shape[2:]), dtype=array.dtype)
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = min(y0 + size, h), min(x0 + size, w)
    out[ys - y0 : ye - y0, xs - x0 : xe - x0] = array[ys:ye, xs:xe]
    return out


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, i)`` for ``i`` in ``range(length)``; ``set_epoch`` picks the epoch.

    Sequential order is enough: :class:`CropDataset` already maps item ``i`` to a per-epoch
    random sample, so consecutive items form shuffled batches.

    With ``shard=True`` and an initialised ``torch.distributed`` process group, rank ``r`` of
    ``w`` yields items ``r, r + w, r + 2w, ...``: global batch ``b`` (one batch from every
    rank) then holds exactly the items of batch ``b`` of a single process whose batch is ``w``
    times larger, so DDP trains on the same batches in the same order. Lightning's own
    ``DistributedSampler`` wrapper would shuffle the items again across ranks, which is why
    training disables it. Items are padded by wrapping around to an equal count per rank,
    because ranks with different numbers of batches would deadlock.
    """

    def __init__(self, length: int, epoch: int = 0, shard: bool = False) -> None:
        self.length = int(length)
        self.epoch = int(epoch)
        self.shard = bool(shard)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _rank_and_world(self) -> tuple[int, int]:
        import torch.distributed as dist

        if self.shard and dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rank, world = self._rank_and_world()
        total = -(-self.length // world) * world
        return ((self.epoch, i % self.length) for i in range(rank, total, world))

    def __len__(self) -> int:
        return -(-self.length // self._rank_and_world()[1])


class WholeImageDataset(_PairSource, Dataset):
    """Whole images for validation, test and prediction, padded to a multiple of ``divisor``.

    The image is padded at the bottom and right by reflection (so the network sees plausible
    context), the mask with 0; ``size`` records ``(H, W)`` before padding (after ``resize``, if
    any), so ``prediction[..., :H, :W]`` undoes the padding. Items are
    ``{"image": (C, Hp, Wp), "mask": target, "name": str, "size": (H, W)}``; ``mask`` is
    absent for samples without labels. Use :func:`collate_whole` with batch size 1.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        *,
        channels: int = 1,
        resize: float | None = None,
        cache: bool | ImageCache = True,
        target: str = "binary",
        divisor: int = 32,
    ) -> None:
        super().__init__(samples, channels, resize, cache, target)
        if divisor < 1:
            raise ConfigError(f"divisor must be a positive number of pixels, got {divisor!r}.")
        self.divisor = int(divisor)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, labels = self.load(index)
        h, w = image.shape[:2]
        pad = ((0, -h % self.divisor), (0, -w % self.divisor))
        item: dict[str, Any] = {
            "image": _to_tensor_image(np.pad(image, (*pad, (0, 0)), mode="reflect")),
            "name": self.samples[index].name,
            "size": (h, w),
        }
        if labels is not None:
            plane = self.load_plane(index, labels)
            item["mask"] = make_target(
                np.pad(labels, pad, mode="constant"), self.target,
                None if plane is None else np.pad(plane, pad, mode="constant"),
            )
        return item


def collate_whole(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack whole-image items (equal shapes, in practice batch size 1); keep names and sizes."""
    shapes = {tuple(item["image"].shape) for item in batch}
    if len(shapes) > 1:
        raise ValueError(f"whole images of different shapes {sorted(shapes)}; use batch_size=1")
    out: dict[str, Any] = {
        "image": torch.stack([item["image"] for item in batch]),
        "name": [item["name"] for item in batch],
        "size": [item["size"] for item in batch],
    }
    if all("mask" in item for item in batch):
        out["mask"] = torch.stack([item["mask"] for item in batch])
    return out
