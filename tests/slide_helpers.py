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
