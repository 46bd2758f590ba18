"""Sliding-window prediction: coverage, blending normalisation, seams and memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from celltune.config import ModelConfig
from celltune.inference.tiling import (
    axis_weight_sum,
    count_tiles,
    gaussian_weight,
    predict_tiled,
    tile_shape,
    tile_starts,
)
from celltune.models.build import build_network


def _sigmoid(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-a))


def _smooth_image(size: int, seed: int = 0) -> np.ndarray:
    x = ndi.gaussian_filter(np.random.default_rng(seed).random((size, size)), 3)
    return ((x - x.min()) / (x.max() - x.min())).astype(np.float32)


def _border_band(length: int, edges: list[int], radius: int = 2) -> np.ndarray:
    band = np.zeros(length, dtype=bool)
    for e in edges:
        band[max(e - radius, 0) : e + radius] = True
    return band


def _seam_ratio(pred: np.ndarray, whole: np.ndarray, edges: list[int]) -> float:
    """Mean |pred - whole| on tile-border pixels divided by the mean elsewhere."""
    band = _border_band(pred.shape[0], edges)
    on_border = band[:, None] | band[None, :]
    diff = np.abs(pred - whole)
    return float(diff[on_border].mean() / diff[~on_border].mean())


def test_tile_starts_hand_computed() -> None:
    # stride = round(32 * 0.75) = 24; ceil((100 - 32) / 24) + 1 = 4 tiles, the last end-aligned
    assert tile_starts(100, 32, 0.25) == [0, 24, 48, 68]
    assert tile_starts(64, 32, 0.5) == [0, 16, 32]
    assert tile_starts(20, 32, 0.25) == [0]


def test_tile_shape_shrinks_for_small_images_and_keeps_the_divisor() -> None:
    assert tile_shape(1000, 1000, 500, 32) == (512, 512)
    assert tile_shape(40, 1, 512, 32) == (64, 32)


def test_gaussian_weight_peaks_in_the_centre_and_is_floored() -> None:
    w = gaussian_weight((64, 48))
    assert w.shape == (64, 48)
    assert w.max() == pytest.approx(1.0, abs=1e-2)
    assert w[32, 24] > w[32, 0] > 0 and w[0, 0] > 0
    np.testing.assert_allclose(w, w[::-1, ::-1], rtol=1e-6)


def test_axis_weight_sums_equal_the_brute_force_2d_sum() -> None:
    th, tw, h, w = 32, 32, 80, 70
    ys, xs = tile_starts(h, th, 0.25), tile_starts(w, tw, 0.25)
    weight = gaussian_weight((th, tw))
    brute = np.zeros((h, w))
    for y in ys:
        for x in xs:
            brute[y : y + th, x : x + tw] += weight
    wy, wx = weight[:, tw // 2] / weight[th // 2, tw // 2], weight[th // 2, :]
    separable = np.outer(axis_weight_sum(h, ys, wy), axis_weight_sum(w, xs, wx))
    np.testing.assert_allclose(separable, brute, rtol=1e-5)


@pytest.mark.parametrize(
    ("height", "width"), [(100, 70), (64, 64), (33, 200), (40, 1), (1, 40), (5, 3)]
)
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_pointwise_forward_is_reproduced_at_any_size(
    height: int, width: int, overlap: float
) -> None:
    # A per-pixel forward gives the same value in every tile, so any blending must return it.
    img = np.random.default_rng(1).random((1, height, width)).astype(np.float32)
    done: list[int] = []
    out = predict_tiled(
        torch.sigmoid,
        img,
        out_channels=1,
        tile=32,
        overlap=overlap,
        batch_size=3,
        on_tile=done.append,
    )
    assert out.shape == (1, height, width)
    np.testing.assert_allclose(out, _sigmoid(img), atol=1e-6)
    assert sum(done) == count_tiles(height, width, 32, overlap)


def test_multichannel_output_is_blended_per_channel() -> None:
    img = np.random.default_rng(2).random((2, 70, 50)).astype(np.float32)
    out = predict_tiled(lambda t: t.flip(1) * 2.0, img, out_channels=2, tile=32)
    np.testing.assert_allclose(out, img[::-1] * 2.0, atol=1e-5)


def test_small_receptive_field_network_tiled_equals_whole() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 1, 3, padding=1),
    ).eval()

    def forward(t: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(net(t))

    img = np.random.default_rng(3).random((1, 160, 96)).astype(np.float32)
    whole = predict_tiled(forward, img, out_channels=1, tile=160)
    tiled = predict_tiled(forward, img, out_channels=1, tile=64, overlap=0.5)
    # Pixels within 3 px of an inner tile edge are wrong in that tile but weighted ~1e-3.
    assert np.abs(tiled - whole).max() < 2e-3


def test_single_tile_equals_a_plain_forward_pass() -> None:
    torch.manual_seed(0)
    model = build_network(ModelConfig(name="unet_plain", options={"tiny": True}), 1).eval()
    img = _smooth_image(64)
    out = predict_tiled(lambda t: torch.sigmoid(model(t)), img[None], out_channels=1, tile=512)
    with torch.no_grad():
        direct = torch.sigmoid(model(torch.from_numpy(img)[None, None]))[0].numpy()
    np.testing.assert_allclose(out, direct, atol=1e-6)


def test_unet_tiles_blend_without_seams() -> None:
    torch.manual_seed(0)
    model = build_network(ModelConfig(name="unet_plain", options={"tiny": True}), 1).eval()

    def forward(t: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(model(t))

    size = 128
    img = _smooth_image(size)
    whole = predict_tiled(forward, img[None], out_channels=1, tile=size)[0]

    blended = predict_tiled(forward, img[None], out_channels=1, tile=64, overlap=0.5)[0]
    starts = tile_starts(size, 64, 0.5)
    edges = sorted({s for s in starts if s} | {s + 64 for s in starts if s + 64 < size})
    # Naive stitching of non-overlapping tiles: the error the blending must avoid.
    naive = np.zeros_like(img)
    with torch.no_grad():
        for y in range(0, size, 64):
            for x in range(0, size, 64):
                tile = torch.from_numpy(img[y : y + 64, x : x + 64].copy())[None, None]
                naive[y : y + 64, x : x + 64] = forward(tile)[0, 0].numpy()

    assert _seam_ratio(naive, whole, [64]) > 2.5  # the measure does see a seam
    assert _seam_ratio(blended, whole, edges) < 1.6  # blending leaves none

    larger = predict_tiled(forward, img[None], out_channels=1, tile=96, overlap=0.5)[0]
    assert np.abs(larger - whole).mean() < 0.02


def test_memory_is_one_accumulator_not_per_tile_outputs() -> None:
    img = np.random.default_rng(4).random((1, 1024, 1024)).astype(np.float32)
    tracemalloc.start()
    try:
        predict_tiled(torch.sigmoid, img, out_channels=1, tile=64, overlap=0.5, batch_size=8)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # One H×W float32 accumulator (4 MiB) plus a batch of tiles; no weight-sum plane, no
    # padded copy, no list of tile outputs (289 tiles of 16 KiB would add 4.5 MiB).
    assert peak < 1.3 * img.nbytes
