"""Predict probability maps, masks and instance labels for images of any size with a trained run.

Example:
    >>> from celltune.inference.predict import Predictor
    >>> predictor = Predictor.from_run("runs/unet")          # doctest: +SKIP
    >>> result = predictor.predict(image)                    # doctest: +SKIP
    >>> result.mask.shape == image.shape[:2]                 # doctest: +SKIP
    True
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from celltune.config import RunConfig
from celltune.errors import ConfigError
from celltune.inference.instances import (
    DEFAULT_H,
    DEFAULT_MIN_FRACTION,
    DEFAULT_MIN_SIZE,
    DEFAULT_SEED_THRESHOLD,
    METHODS,
    class_foreground,
    distance_foreground,
    instances_from_classes_tiled,
    instances_from_distance_tiled,
    label_instances_tiled,
    remove_relative,
)
from celltune.inference.tiling import count_tiles, predict_tiled
from celltune.io import normalize, normalize_bounds, to_channels
from celltune.models.base import INSTANCE_HEADS
from celltune.models.build import class_probabilities, foreground_probability
from celltune.models.checkpoint import load_model_from_checkpoint
from celltune.rundir import RunDir

#: Parameters of the instance step a predictor carries (``postprocess.json``'s ``best``).
INSTANCE_PARAMETERS = ("method", "h", "seed_threshold", "min_size", "min_fraction")
#: Heads whose cells grow from seeds the network predicts (tuned by ``seed_threshold``);
#: the others split their mask by the distance-transform watershed (tuned by ``h``).
SEEDED_HEADS = INSTANCE_HEADS


@dataclass
class Prediction:
    """Foreground probability ``(H, W)`` float32 and the thresholded boolean mask.

    For the ``boundary`` head ``classes`` holds the ``(3, H, W)`` float32 probabilities of
    background, interior and boundary (``probability`` is ``1 - classes[0]``); for the
    ``distance`` head the ``(2, H, W)`` foreground probability and normalised distance
    (``probability`` is ``classes[0]``); it is None for the other heads.
    """

    probability: np.ndarray
    mask: np.ndarray
    threshold: float
    classes: np.ndarray | None = None


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` -> CUDA when available, else CPU; anything else as torch parses it."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(
            f"--device {device!r} is not a device name; use cpu, cuda or auto."
        ) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"--device {device!r} asks for CUDA, which is not available here; use cpu."
        )
    return resolved


def check_tiling(tile: int, overlap: float, batch_size: int) -> None:
    """Raise a one-sentence :class:`ConfigError` for unusable tiling options."""
    if tile < 1:
        raise ConfigError(f"--tile must be a positive number of pixels, got {tile}.")
    if not 0.0 <= overlap < 1.0:
        raise ConfigError(f"--overlap must be a fraction in [0, 1), got {overlap}.")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}.")


def flip_tta(
    forward: Callable[[torch.Tensor], torch.Tensor],
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Average predictions over the identity and horizontal/vertical/both flips."""

    def wrapped(x: torch.Tensor) -> torch.Tensor:
        total = forward(x)
        for dims in ((-1,), (-2,), (-2, -1)):
            total = total + forward(torch.flip(x, dims)).flip(dims)
        return total / 4.0

    return wrapped


class Predictor:
    """A trained network plus everything needed to apply it: channels, threshold, tiling."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        head: str = "binary",
        channels: int = 1,
        threshold: float = 0.5,
        resize: float | None = None,
        tile: int = 512,
        overlap: float = 0.25,
        batch_size: int = 4,
        tta: bool = False,
        device: str | torch.device | None = None,
        instances: dict[str, Any] | None = None,
        pixel_size: float | None = None,
    ) -> None:
        check_tiling(tile, overlap, batch_size)
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        if self.device.type == "cpu":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.head = head
        self.channels = channels
        self.threshold = 0.5 if head == "two_class" else float(threshold)
        self.resize = resize
        self.tile = tile
        self.overlap = overlap
        self.batch_size = batch_size
        self.tta = tta
        #: Pixel size (µm) of the training images, when the run records it.
        self.pixel_size = pixel_size
        #: Pixel size (µm) of the images this predictor is set for (:meth:`at_pixel_size`).
        self.input_pixel_size: float | None = None
        #: Fixed per-channel normalisation ``(lo, hi)`` (:meth:`with_normalization`); None =
        #: each image's own percentiles.
        self.bounds: list[tuple[float, float]] | None = None
        #: The instance step (:meth:`label`): method, h, seed_threshold, min_size.
        self.instance_method = "watershed"
        #: Binary heads' watershed: how far a distance peak must rise to seed its own cell.
        self.h = DEFAULT_H
        #: Boundary head: smallest interior probability of an instance seed; distance head:
        #: smallest normalised distance of one.
        self.seed_threshold = DEFAULT_SEED_THRESHOLD
        #: Smallest cell kept, in pixels.
        self.min_size = DEFAULT_MIN_SIZE
        #: Smallest cell kept, as a fraction of the image's typical cell area.
        self.min_fraction = DEFAULT_MIN_FRACTION
        self._set_instances(instances or {})
        self.divisor = int(getattr(model, "size_divisor", 32))
        #: Where the model came from (set by :meth:`from_run`); recorded in predict_args.json.
        self.source: dict[str, Any] = {}

    def _set_instances(self, params: dict[str, Any]) -> None:
        unknown = sorted(set(params) - set(INSTANCE_PARAMETERS))
        if unknown:
            raise ConfigError(
                f"Unknown instance parameter(s) {', '.join(unknown)}; valid ones are: "
                f"{', '.join(INSTANCE_PARAMETERS)}."
            )
        method = params.get("method", self.instance_method)
        if method not in METHODS:
            raise ConfigError(
                f"--instances {method!r} is unknown; valid methods are: {', '.join(METHODS)}."
            )
        min_size = int(params.get("min_size", self.min_size))
        if min_size < 0:
            raise ConfigError(f"--min-size must be >= 0 pixels, got {min_size}.")
        self.instance_method, self.min_size = method, min_size
        self.h = float(params.get("h", self.h))
        self.seed_threshold = float(params.get("seed_threshold", self.seed_threshold))
        fraction = float(params.get("min_fraction", self.min_fraction))
        if not 0.0 <= fraction < 1.0:
            raise ConfigError(f"min_fraction must lie in [0, 1), got {fraction}.")
        self.min_fraction = fraction

    def instance_params(self) -> dict[str, Any]:
        """The instance step's parameters that apply to this head, JSON-ready."""
        params: dict[str, Any] = {"method": self.instance_method}
        if self.head in SEEDED_HEADS:
            params["seed_threshold"] = self.seed_threshold
        else:
            params["h"] = self.h
        params["min_size"] = self.min_size
        params["min_fraction"] = self.min_fraction
        return params

    def with_options(
        self,
        *,
        tile: int | None = None,
        overlap: float | None = None,
        batch_size: int | None = None,
        tta: bool | None = None,
        threshold: float | None = None,
        instances: dict[str, Any] | None = None,
    ) -> Predictor:
        """A copy with other tiling, TTA, threshold or instance parameters (``None`` keeps a
        value; ``instances`` replaces only the parameters it names).

        The copy shares the network; this predictor is left as it was.
        """
        tile = self.tile if tile is None else tile
        overlap = self.overlap if overlap is None else overlap
        batch_size = self.batch_size if batch_size is None else batch_size
        check_tiling(tile, overlap, batch_size)
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"--threshold must lie in [0, 1], got {threshold}.")
        other = copy.copy(self)
        other.source = dict(self.source)
        other.tile, other.overlap, other.batch_size = tile, overlap, batch_size
        other.tta = self.tta if tta is None else tta
        if threshold is not None and self.head != "two_class":
            other.threshold = float(threshold)
        other._set_instances({k: v for k, v in (instances or {}).items() if v is not None})
        return other

    def at_pixel_size(self, pixel_size: float | None) -> Predictor:
        """A copy for images whose pixels are ``pixel_size`` µm wide.

        When the run records the pixel size it was trained at, images are rescaled by
        ``pixel_size / trained`` (on top of the run's ``resize``) so cells appear at the
        trained scale; the probability comes back on the input grid and the instance step's
        pixel measures (``min_size``, ``h``) are scaled to that grid. Without either pixel
        size the copy predicts as this predictor does.
        """
        other = copy.copy(self)
        other.source = dict(self.source)
        other.input_pixel_size = pixel_size
        if pixel_size is None or self.pixel_size is None or pixel_size == self.pixel_size:
            return other
        if pixel_size <= 0:
            raise ConfigError(f"--pixel-size must be positive (µm), got {pixel_size}.")
        k = pixel_size / self.pixel_size
        other.resize = (self.resize or 1.0) * k
        other.min_size = round(self.min_size / k**2)
        other.h = self.h / k
        return other

    def with_normalization(self, bounds: list[tuple[float, float]] | None) -> Predictor:
        """A copy that normalises every image with fixed per-channel ``(lo, hi)`` bounds
        (blocks of one slide must share them), or by each image's percentiles (None)."""
        other = copy.copy(self)
        other.source = dict(self.source)
        other.bounds = None if bounds is None else [(float(a), float(b)) for a, b in bounds]
        return other

    def normalization_bounds(self, image: np.ndarray) -> list[tuple[float, float]]:
        """The bounds :meth:`preprocess` would use for ``image`` (a slide's overview)."""
        img = np.asarray(image, dtype=np.float32)
        img = img[:, :, None] if img.ndim == 2 else img
        return normalize_bounds(to_channels(img, self.channels))

    def describe(self) -> dict[str, Any]:
        """Everything that determines the output, as JSON-ready values."""
        return {
            **self.source,
            "model": getattr(self.model, "name", type(self.model).__name__),
            "head": self.head,
            "channels": self.channels,
            "threshold": self.threshold,
            "resize": self.resize,
            "pixel_size": self.pixel_size,
            "input_pixel_size": self.input_pixel_size,
            "tile": self.tile,
            "overlap": self.overlap,
            "batch_size": self.batch_size,
            "tta": self.tta,
            "instances": self.instance_params(),
            "device": str(self.device),
            "size_divisor": self.divisor,
        }

    def tile_count(self, height: int, width: int) -> int:
        """Tiles (forward passes per TTA view) needed for an image of this size."""
        if self.resize and self.resize != 1.0:
            height = max(1, math.floor(height * self.resize))
            width = max(1, math.floor(width * self.resize))
        return count_tiles(height, width, self.tile, self.overlap, self.divisor)

    @classmethod
    def from_run(
        cls,
        run: str | os.PathLike | RunDir,
        *,
        checkpoint: str = "best",
        config: RunConfig | None = None,
        **overrides: Any,
    ) -> Predictor:
        """Load a run's checkpoint (``best`` or ``last``) with its config, threshold and
        instance parameters (``postprocess.json``, the defaults before one was tuned).

        ``config`` is the run's config when the caller has already read it.
        """
        run = run if isinstance(run, RunDir) else RunDir(run)
        cfg = config or run.read_config()
        model, _ = load_model_from_checkpoint(run.checkpoint(checkpoint), config=cfg)
        given = {k: v for k, v in overrides.items() if v is not None}
        kwargs: dict[str, Any] = {
            "head": cfg.model.head,
            "channels": cfg.data.channels,
            "resize": cfg.data.resize,
            "tile": cfg.eval.tile,
            "overlap": cfg.eval.overlap,
            "batch_size": cfg.eval.batch_size,
            "pixel_size": cfg.data.pixel_size,
        }
        # The saved choices are read only when not given, so a run whose threshold.json or
        # postprocess.json is damaged can still be loaded to choose them again.
        if "threshold" not in given:
            kwargs["threshold"] = run.read_threshold()
        if "instances" not in given:
            kwargs["instances"] = run.read_postprocess()
        kwargs.update(given)
        predictor = cls(model, **kwargs)
        predictor.source = {"run": str(run.path), "checkpoint": checkpoint}
        return predictor

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """Raw ``(H, W)`` or ``(H, W, C)`` -> normalised ``(C, H, W)`` float32."""
        img = np.asarray(image, dtype=np.float32)
        if img.ndim == 2:
            img = img[:, :, None]
        img = normalize(to_channels(img, self.channels), bounds=self.bounds)
        return np.ascontiguousarray(np.moveaxis(img, -1, 0))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        return foreground_probability(self.model(x), keepdim=True, head=self.head)

    def _forward_classes(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        return class_probabilities(self.model(x), head=self.head)

    def _tiled(
        self,
        image: np.ndarray,
        forward: Callable[[torch.Tensor], torch.Tensor],
        out_channels: int,
        on_tile: Callable[[int], None] | None,
    ) -> np.ndarray:
        """``(out_channels, H, W)`` of ``forward`` over a raw image, tiled, at its own size."""
        chw = self.preprocess(image)
        h, w = chw.shape[1:]
        if self.resize and self.resize != 1.0:
            chw = _rescale(chw, self.resize)
        out = predict_tiled(
            flip_tta(forward) if self.tta else forward,
            chw,
            out_channels=out_channels,
            tile=self.tile,
            overlap=self.overlap,
            batch_size=self.batch_size,
            divisor=self.divisor,
            device=self.device,
            on_tile=on_tile,
        )
        return out if out.shape[1:] == (h, w) else _rescale(out, (h, w))

    def predict_proba(
        self, image: np.ndarray, on_tile: Callable[[int], None] | None = None
    ) -> np.ndarray:
        """Foreground probability ``(H, W)`` for a raw image of any size.

        Only the foreground channel is blended and kept, whatever the head, so memory is one
        float32 plane (for the ``boundary`` head it is ``1 - P(background)``).
        """
        return self._tiled(image, self._forward, 1, on_tile)[0]

    def predict_classes(
        self, image: np.ndarray, on_tile: Callable[[int], None] | None = None
    ) -> np.ndarray:
        """Per-channel probabilities ``(out_channels, H, W)`` float32 for a raw image.

        A softmax over the channels for the ``two_class`` and ``boundary`` heads (for the
        latter: background, interior, boundary), the sigmoid of the single logit for
        ``binary``, a sigmoid per channel for ``distance`` (foreground, normalised distance).
        Every channel is blended over the tiles with the same weights, and rescaled back to
        the image's size when the run resizes.
        """
        channels = int(getattr(self.model, "out_channels", 1))
        return self._tiled(image, self._forward_classes, channels, on_tile)

    def predict(
        self, image: np.ndarray, on_tile: Callable[[int], None] | None = None
    ) -> Prediction:
        """Probability map and mask (probability >= threshold) for a raw image.

        The ``boundary`` and ``distance`` heads' predictions also carry their per-channel
        probabilities, from which :meth:`label` decodes the cells.
        """
        if self.head not in INSTANCE_HEADS:
            prob = self.predict_proba(image, on_tile=on_tile)
            return Prediction(prob, prob >= self.threshold, self.threshold)
        classes = self.predict_classes(image, on_tile=on_tile)
        foreground = distance_foreground if self.head == "distance" else class_foreground
        prob = foreground(classes)
        return Prediction(prob, prob >= self.threshold, self.threshold, classes)

    def label(
        self,
        mask: np.ndarray,
        classes: np.ndarray | None = None,
        method: str | None = None,
        min_size: int | None = None,
    ) -> np.ndarray:
        """Instance labels (int32, 0 = background) of a :meth:`predict` result's ``mask`` and
        ``classes``, with this predictor's instance parameters (``None`` keeps them).

        ``"watershed"`` with the ``boundary`` head's ``classes`` seeds one cell per interior
        region and grows it over the foreground
        (:func:`~celltune.inference.instances.instances_from_classes`, with this predictor's
        ``seed_threshold``, and its threshold as the foreground threshold, so the cells cover
        ``mask``); with the ``distance`` head's it seeds one cell per region of high predicted
        distance and grows it down the distance map
        (:func:`~celltune.inference.instances.instances_from_distance`, same thresholds);
        without ``classes`` it is the distance-transform watershed of ``mask`` with this
        predictor's ``h``. ``"components"`` labels the mask's connected regions for
        every head. Both run window by window on large images, so memory stays bounded.
        Cells under ``min_size`` pixels, then under ``min_fraction`` of the image's typical
        cell area (:func:`~celltune.inference.instances.typical_area`), are dropped.

        Raises:
            ConfigError: ``method`` is unknown.
        """
        cells = self._decode(mask, classes, method, min_size)
        return remove_relative(cells, self.min_fraction)

    def _decode(
        self, mask: np.ndarray, classes: np.ndarray | None, method: str | None,
        min_size: int | None,
    ) -> np.ndarray:
        method = self.instance_method if method is None else method
        min_size = self.min_size if min_size is None else min_size
        if method not in METHODS:
            raise ConfigError(
                f"Unknown instance method {method!r}; valid methods are: {', '.join(METHODS)}."
            )
        if method == "watershed" and classes is not None:
            decode = (instances_from_distance_tiled if self.head == "distance"
                      else instances_from_classes_tiled)
            return decode(
                classes, seed_threshold=self.seed_threshold, fg_threshold=self.threshold,
                min_size=min_size,
            )
        return label_instances_tiled(mask, method=method, min_size=min_size, h=self.h)

    def predict_instances(
        self,
        image: np.ndarray,
        method: str | None = None,
        min_size: int | None = None,
        on_tile: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Instance labels ``(H, W)`` int32 for a raw image, for any head (see :meth:`label`)."""
        prediction = self.predict(image, on_tile=on_tile)
        return self.label(prediction.mask, prediction.classes, method=method, min_size=min_size)


def _rescale(chw: np.ndarray, factor: float | tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(chw))[None]
    if isinstance(factor, tuple):
        out = torch.nn.functional.interpolate(t, size=factor, mode="bilinear", align_corners=False)
    else:
        out = torch.nn.functional.interpolate(
            t, scale_factor=factor, mode="bilinear", align_corners=False
        )
    return out[0].numpy()
