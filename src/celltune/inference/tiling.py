"""Sliding-window prediction with Gaussian blending, for images of any size.

The image is covered by overlapping tiles; each tile's probabilities are weighted by a
Gaussian that is highest in the tile centre (where the network sees the most context) and
accumulated. Memory is bounded by the tile batch plus two full-resolution float32 planes per
output channel (the weighted sum and the weight sum); no per-tile logits are kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch

ForwardFn = Callable[[torch.Tensor], torch.Tensor]


def round_up(value: int, divisor: int) -> int:
    return int(math.ceil(value / divisor) * divisor)


def gaussian_weight(shape: tuple[int, int], sigma_scale: float = 0.125) -> np.ndarray:
    """A 2-D Gaussian over a tile, peak 1, floored so borders still count a little."""
    axes = []
    for n in shape:
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
        sigma = max(n * sigma_scale, 1.0)
        axes.append(np.exp(-0.5 * (x / sigma) ** 2))
    w = np.outer(axes[0], axes[1])
    w /= w.max()
    return np.maximum(w, 1e-3).astype(np.float32)


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets covering ``[0, length)`` with tiles of ``tile`` and the given overlap.

    The last tile is aligned to the end, so every tile lies fully inside the (padded) image.
    """
    if length <= tile:
        return [0]
    stride = max(1, int(round(tile * (1.0 - overlap))))
    n = int(math.ceil((length - tile) / stride)) + 1
    starts = [min(i * stride, length - tile) for i in range(n)]
    return sorted(set(starts))


def pad_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pad ``(C, H, W)`` at the bottom/right to at least ``height`` × ``width`` by mirroring."""
    _, h, w = image.shape
    ph, pw = max(0, height - h), max(0, width - w)
    if ph == 0 and pw == 0:
        return image
    mode = "reflect" if h > 1 and w > 1 else "edge"
    if mode == "reflect" and (ph >= h or pw >= w):
        mode = "symmetric"
    return np.pad(image, ((0, 0), (0, ph), (0, pw)), mode=mode)


def tile_shape(height: int, width: int, tile: int, divisor: int) -> tuple[int, int]:
    """Tile size: ``tile`` per axis, shrunk for small images, always a multiple of ``divisor``."""
    tile = round_up(tile, divisor)
    return min(tile, round_up(height, divisor)), min(tile, round_up(width, divisor))


def _windows(height: int, width: int, th: int, tw: int, overlap: float) -> Iterator[tuple[int, int]]:
    for y in tile_starts(height, th, overlap):
        for x in tile_starts(width, tw, overlap):
            yield y, x


def count_tiles(height: int, width: int, tile: int, overlap: float, divisor: int = 32) -> int:
    th, tw = tile_shape(height, width, tile, divisor)
    ph, pw = max(height, th), max(width, tw)
    return len(tile_starts(ph, th, overlap)) * len(tile_starts(pw, tw, overlap))


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
    """
    if image.ndim != 3:
        raise ValueError(f"expected (C, H, W), got {image.shape}")
    _, h, w = image.shape
    th, tw = tile_shape(h, w, tile, divisor)
    padded = pad_to(image, max(h, th), max(w, tw))
    ph, pw = padded.shape[1:]
    acc = np.zeros((out_channels, ph, pw), dtype=np.float32)
    norm = np.zeros((ph, pw), dtype=np.float32)
    weight = gaussian_weight((th, tw))
    weight_t = torch.from_numpy(weight).to(device)
    batch: list[tuple[int, int]] = []

    def flush() -> None:
        tiles = np.stack([padded[:, y : y + th, x : x + tw] for y, x in batch])
        x_t = torch.from_numpy(np.ascontiguousarray(tiles)).to(device)
        probs = (forward(x_t).float() * weight_t).cpu().numpy()
        for (y, x), p in zip(batch, probs, strict=True):
            acc[:, y : y + th, x : x + tw] += p
            norm[y : y + th, x : x + tw] += weight
        if on_tile is not None:
            on_tile(len(batch))
        batch.clear()

    for window in _windows(ph, pw, th, tw, overlap):
        batch.append(window)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    acc /= norm[None]
    return acc[:, :h, :w]
