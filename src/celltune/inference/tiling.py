"""Sliding-window prediction with Gaussian blending, for images of any size.

The image is covered by a grid of overlapping tiles; each tile's probabilities are weighted by
a Gaussian that is highest in the tile centre (where the network sees the most context) and
accumulated. The weight is separable (a product of one Gaussian per axis) and the tiles form a
full grid, so the sum of weights at a pixel is the product of two 1-D sums: the only
full-resolution buffer is the ``(out_channels, H, W)`` float32 accumulator. Tiles are cut (and
mirror-padded where the image is smaller than a tile) one batch at a time, so no padded copy of
the image and no per-tile output is ever held beyond the current batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch

ForwardFn = Callable[[torch.Tensor], torch.Tensor]

#: Smallest per-axis weight: pixels seen only by tile borders (image corners) still count.
_WEIGHT_FLOOR = 1e-3


def round_up(value: int, divisor: int) -> int:
    """Smallest multiple of ``divisor`` that is >= ``value``."""
    return math.ceil(value / divisor) * divisor


def gaussian_1d(n: int, sigma_scale: float = 0.125) -> np.ndarray:
    """A 1-D Gaussian over ``n`` pixels, peak 1, floored at a small positive value."""
    x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
    sigma = max(n * sigma_scale, 1.0)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return np.maximum(w / w.max(), _WEIGHT_FLOOR).astype(np.float32)


def gaussian_weight(shape: tuple[int, int], sigma_scale: float = 0.125) -> np.ndarray:
    """The 2-D tile weight: outer product of one :func:`gaussian_1d` per axis."""
    return np.outer(gaussian_1d(shape[0], sigma_scale), gaussian_1d(shape[1], sigma_scale))


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets covering ``[0, length)`` with tiles of ``tile`` and the given overlap.

    The last tile is aligned to the end, so every tile lies fully inside the image when
    ``length >= tile``; otherwise there is one tile at 0 that overhangs the end.
    """
    if length <= tile:
        return [0]
    stride = max(1, round(tile * (1.0 - overlap)))
    n = math.ceil((length - tile) / stride) + 1
    starts = [min(i * stride, length - tile) for i in range(n)]
    return sorted(set(starts))


def pad_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pad ``(C, H, W)`` at the bottom/right to at least ``height`` × ``width`` by mirroring."""
    _, h, w = image.shape
    ph, pw = max(0, height - h), max(0, width - w)
    if ph == 0 and pw == 0:
        return image
    # numpy reflects repeatedly when the pad exceeds the image, and repeats a 1-pixel strip.
    return np.pad(image, ((0, 0), (0, ph), (0, pw)), mode="reflect")


def tile_shape(height: int, width: int, tile: int, divisor: int) -> tuple[int, int]:
    """Tile size: ``tile`` per axis, shrunk for small images, always a multiple of ``divisor``."""
    tile = round_up(tile, divisor)
    return min(tile, round_up(height, divisor)), min(tile, round_up(width, divisor))


def _grid(height: int, width: int, th: int, tw: int, overlap: float) -> tuple[list[int], list[int]]:
    return tile_starts(height, th, overlap), tile_starts(width, tw, overlap)


def _windows(ys: list[int], xs: list[int]) -> Iterator[tuple[int, int]]:
    for y in ys:
        for x in xs:
            yield y, x


def count_tiles(height: int, width: int, tile: int, overlap: float, divisor: int = 32) -> int:
    """Number of tiles :func:`predict_tiled` runs for an image of ``height`` × ``width``."""
    th, tw = tile_shape(height, width, tile, divisor)
    ys, xs = _grid(height, width, th, tw, overlap)
    return len(ys) * len(xs)


def axis_weight_sum(length: int, starts: list[int], weight: np.ndarray) -> np.ndarray:
    """Sum over tiles of the 1-D weight at each of ``length`` positions (overhang dropped)."""
    total = np.zeros(length, dtype=np.float32)
    for s in starts:
        n = min(len(weight), length - s)
        total[s : s + n] += weight[:n]
    return total


def _cut(image: np.ndarray, y: int, x: int, th: int, tw: int) -> np.ndarray:
    """The ``(C, th, tw)`` tile at ``(y, x)``, mirror-padded where it overhangs the image."""
    return pad_to(image[:, y : y + th, x : x + tw], th, tw)


@torch.inference_mode()
def predict_tiled(
    forward: ForwardFn,
    image: np.ndarray,
    *,
    out_channels: int,
    tile: int = 512,
    overlap: float = 0.25,
    batch_size: int = 4,
    divisor: int = 32,
    device: torch.device | str = "cpu",
    on_tile: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Blend per-tile outputs of ``forward`` over a ``(C, H, W)`` float32 image.

    Args:
        forward: maps a ``(B, C, th, tw)`` tensor to per-pixel probabilities
            ``(B, out_channels, th, tw)`` (already sigmoid/softmax-ed).
        image: normalised image, channels first.
        out_channels: channels ``forward`` returns.
        tile: tile side (rounded up to ``divisor``; shrunk for small images).
        overlap: fraction of a tile shared with its neighbour.
        batch_size: tiles per forward call; bounds memory.
        divisor: the network's size divisor (32 for five-level encoders).
        device: where ``forward`` runs.
        on_tile: called with the number of tiles done after each batch (progress bars).

    Returns:
        ``(out_channels, H, W)`` float32 blended probabilities.

    Example:
        >>> img = np.random.rand(1, 100, 70).astype(np.float32)
        >>> out = predict_tiled(torch.sigmoid, img, out_channels=1, tile=32)
        >>> np.allclose(out, 1 / (1 + np.exp(-img)), atol=1e-6)
        True
    """
    if image.ndim != 3:
        raise ValueError(f"expected (C, H, W), got {image.shape}")
    _, h, w = image.shape
    th, tw = tile_shape(h, w, tile, divisor)
    ys, xs = _grid(h, w, th, tw, overlap)
    wy, wx = gaussian_1d(th), gaussian_1d(tw)
    weight_t = torch.from_numpy(np.outer(wy, wx)).to(device)
    acc = np.zeros((out_channels, h, w), dtype=np.float32)
    batch: list[tuple[int, int]] = []

    def flush() -> None:
        tiles = np.stack([_cut(image, y, x, th, tw) for y, x in batch])
        x_t = torch.from_numpy(np.ascontiguousarray(tiles, dtype=np.float32)).to(device)
        probs = (forward(x_t).float() * weight_t).cpu().numpy()
        for (y, x), p in zip(batch, probs, strict=True):
            vh, vw = min(th, h - y), min(tw, w - x)
            acc[:, y : y + vh, x : x + vw] += p[:, :vh, :vw]
        if on_tile is not None:
            on_tile(len(batch))
        batch.clear()

    for window in _windows(ys, xs):
        batch.append(window)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    # Separable weights on a full grid: the weight sum at (y, x) is Ny(y) * Nx(x).
    acc /= axis_weight_sum(h, ys, wy)[None, :, None]
    acc /= axis_weight_sum(w, xs, wx)[None, None, :]
    return acc
