"""Synthetic slides and a stand-in network for the whole-slide tests (shared)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from celltune.inference.predict import Predictor


class StandIn(torch.nn.Module):
    """A 'network' whose logit is a pointwise function of the normalised image, so tiled,
    blocked and whole-image predictions agree exactly and tests check the block logic."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 40.0 * (x[:, :1] - 0.5)


def stand_in_predictor(method: str = "components", **kwargs) -> Predictor:
    return Predictor(StandIn(), head="binary", tile=256, device="cpu",
                     instances={"method": method, "min_size": 5}, **kwargs)


def disc_image(shape: tuple[int, int], centres, radius: float, value: int = 1000) -> np.ndarray:
    """uint16 background 100 with bright discs."""
    h, w = shape
    img = np.full(shape, 100, np.uint16)
    for cy, cx in centres:
        y0, y1 = max(0, int(cy - radius - 1)), min(h, int(cy + radius + 2))
        x0, x1 = max(0, int(cx - radius - 1)), min(w, int(cx + radius + 2))
        yy, xx = np.mgrid[y0:y1, x0:x1]
        img[y0:y1, x0:x1][(yy - cy) ** 2 + (xx - cx) ** 2 <= radius * radius] = value
    return img


def straddling_centres(
    shape: tuple[int, int], block: int, n_random: int, seed: int = 0, gap: float = 0.0
):
    """Disc centres on block edges and corners, plus random ones at least ``gap`` apart from
    every other centre (0: they may overlap and touch)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    centres: list[tuple[int, int]] = []
    for y in range(block, h, block):
        centres += [(y, x) for x in range(block // 3, w, block)]  # cut by a row edge
        centres += [(y, x) for x in range(block, w, block)]  # on a corner
    for x in range(block, w, block):
        centres += [(y, x) for y in range(2 * block // 3, h, block)]  # cut by a column edge
    for _ in range(n_random * 20):
        if n_random == 0:
            break
        c = (int(rng.integers(12, h - 12)), int(rng.integers(12, w - 12)))
        if all((c[0] - a) ** 2 + (c[1] - b) ** 2 >= gap * gap for a, b in centres):
            centres.append(c)
            n_random -= 1
    return centres


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two label maps hold the same cells, whatever their ids."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(set(pairs[0])) == len(set(pairs[1])) == pairs.shape[1]


def write_slide(path: Path, image: np.ndarray, pixel_size: float | None = 0.5,
                version: str = "0.4", chunks=(256, 256)) -> Path:
    from celltune.ome import write_ome_zarr

    return write_ome_zarr(path, image, pixel_size=pixel_size, version=version, chunks=chunks)


class DiscAnswer(torch.nn.Module):
    """Runs ``net`` (a tiny run's untrained U-Net) at its full cost but answers like
    :class:`StandIn`: the untrained network's own mask covers ~77% of a disc image, which
    would leave the labelling nothing like real cells to work on."""

    size_divisor = 32

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 40.0 * (x[:, :1] - 0.5) + 0.0 * self.net(x)[:, :1]


def big_slide_centres(size: int, block: int, spacing: int = 64, seed: int = 0,
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Disc centres for a ``size``² slide: those on block edges and corners (as
    :func:`straddling_centres`), and a jittered grid inside each block kept 40+ pixels from
    its edges, so discs of radius <= 9 never touch. Returns (straddling, all) as (n, 2)."""
    edges = np.array(straddling_centres((size, size), block, 0), dtype=np.int64).reshape(-1, 2)
    offsets = np.arange(48, block - 47, spacing)
    starts = np.arange(0, size, block)
    grid = (starts[:, None] + offsets[None, :]).ravel()
    grid = grid[grid < size - 48]
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    jitter = np.random.default_rng(seed).integers(-8, 9, (yy.size, 2))
    inner = np.stack([yy.ravel(), xx.ravel()], axis=1) + jitter
    return edges, np.concatenate([edges, inner])


def write_disc_slide(path: Path, size: int, centres: np.ndarray, radius: float = 9,
                     chunk: int = 1024) -> Path:
    """A ``size``² uint16 NGFF 0.4 slide of :func:`disc_image` discs, written chunk by chunk
    so no more than one chunk is ever in memory."""
    from celltune.ome import create_ome_zarr

    array = create_ome_zarr(path, (size, size), np.uint16, pixel_size=0.5, chunks=(chunk, chunk))
    reach = radius + 2
    for y in range(0, size, chunk):
        near_y = centres[(centres[:, 0] > y - reach) & (centres[:, 0] < y + chunk + reach)]
        for x in range(0, size, chunk):
            near = near_y[(near_y[:, 1] > x - reach) & (near_y[:, 1] < x + chunk + reach)]
            h, w = min(chunk, size - y), min(chunk, size - x)
            array[y:y + h, x:x + w] = disc_image((h, w), near - (y, x), radius)
    return path


def same_partition_chunked(a, b, chunk: int = 1024) -> bool:
    """:func:`same_partition` of two 2-D label arrays (zarr or numpy), read a chunk at a
    time: memory is a chunk plus one pair of ids per cell."""
    h, w = a.shape
    pairs = [np.zeros(0, np.int64)]
    for y in range(0, h, chunk):
        for x in range(0, w, chunk):
            pa = np.asarray(a[y:y + chunk, x:x + chunk]).astype(np.int64)
            pb = np.asarray(b[y:y + chunk, x:x + chunk]).astype(np.int64)
            fg = pa > 0
            if not np.array_equal(fg, pb > 0):
                return False
            pairs.append(np.unique((pa[fg] << 32) | pb[fg]))
    every = np.unique(np.concatenate(pairs))
    return len(np.unique(every >> 32)) == len(np.unique(every & 0xFFFFFFFF)) == every.size


def cut_discs(labels, centres: np.ndarray, radius: float, block: int) -> list[tuple[int, int]]:
    """The discs among ``centres`` (all on block edges) that are not exactly one label:
    read in bands along each block edge, so memory is one band."""
    h, w = labels.shape
    pad = int(radius) + 2
    bad = []
    for axis, size in ((0, h), (1, w)):
        for edge in range(block, size, block):
            lo = edge - pad
            band = np.asarray(labels[lo:edge + pad + 1, :] if axis == 0
                              else labels[:, lo:edge + pad + 1])
            on_edge = centres[centres[:, axis] == edge]
            for cy, cx in on_edge:
                y0, x0 = max(0, cy - pad), max(0, cx - pad)
                win = (slice(y0, cy + pad + 1), slice(x0, cx + pad + 1))
                yy, xx = np.mgrid[win]
                disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius * radius
                local = (slice(win[0].start - lo, win[0].stop - lo), win[1]) if axis == 0 else (
                    win[0], slice(win[1].start - lo, win[1].stop - lo))
                cells = band[local]
                ids = np.unique(cells[disc])
                if ids.size != 1 or ids[0] == 0 or not np.array_equal(cells == ids[0], disc):
                    bad.append((int(cy), int(cx)))
    return bad
