"""Optics and camera for the synthetic generator: turn a :class:`CellLayout` into pixels.

Each modality maps the layout (which cell is on top, where inside it) to a relative intensity
with its own contrast mechanism, then shares the same imaging chain: Gaussian PSF, uneven
illumination, Poisson shot noise, camera gain and offset (a high 16-bit floor) and Gaussian
read noise. Intensities never feed back into geometry, so labels stay exact.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

from celltune.data.synth_cells import CellLayout

_FULL_SCALE = 62_000  # keep a little headroom below 65535 so nothing saturates by accident


def texture(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Smooth random field with zero mean and unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal((size, size), dtype=np.float32), sigma)
    return (field - field.mean()) / (field.std() + 1e-6)


def spots(rng: np.random.Generator, mask: np.ndarray, per_pixel: float, sigma: float) -> np.ndarray:
    """Small blurred dots (granules, nucleoli) at random positions inside ``mask``."""
    size = mask.shape[0]
    count = int(per_pixel * mask.sum()) + 1
    ys, xs = rng.integers(0, size, (2, count))
    weights = rng.exponential(1.0, count).astype(np.float32)
    keep = mask[ys, xs]
    field = np.zeros(mask.shape, np.float32)
    np.add.at(field, (ys[keep], xs[keep]), weights[keep])
    # Normalise so that a unit-weight dot peaks at 1 whatever the blur width.
    return ndimage.gaussian_filter(field, sigma) * np.float32(2 * np.pi * sigma * sigma)


def illumination(rng: np.random.Generator, size: int) -> np.ndarray:
    """Uneven illumination: a few low-frequency waves times an off-centre vignette."""
    grid = np.arange(size, dtype=np.float32) / size
    yy, xx = grid[:, None], grid[None, :]
    field = np.ones((size, size), np.float32)
    for _ in range(3):
        fx, fy = rng.uniform(-1.2, 1.2, 2)
        phase = rng.uniform(0, 2 * np.pi)
        field += np.float32(rng.uniform(0.0, 0.08)) * np.cos(
            2 * np.pi * (fx * xx + fy * yy) + phase
        )
    cx, cy = rng.uniform(0.3, 0.7, 2)
    vignette = 1.0 - rng.uniform(0.05, 0.25) * ((xx - cx) ** 2 + (yy - cy) ** 2) / 0.5
    return np.clip(field * vignette, 0.3, None).astype(np.float32)


def _dome(layout: CellLayout, power: float) -> np.ndarray:
    """Cell height profile: 1 at the centre, 0 at the edge and outside."""
    return np.clip(1.0 - layout.radial**2, 0.0, 1.0) ** np.float32(power)


def _nucleus_mask(layout: CellLayout) -> np.ndarray:
    """Soft nucleus (edge ramp of ~a quarter of its radius)."""
    return np.clip((1.0 - layout.nucleus) * 4.0, 0.0, 1.0)


def _fluorescence(rng: np.random.Generator, layout: CellLayout, size: int) -> np.ndarray:
    fg = layout.foreground
    level = layout.brightness[layout.ids]
    tex = texture(rng, size, rng.uniform(0.8, 2.0))
    if layout.nucleus.min() > 1.0:  # nuclear stain: the objects are nuclei with chromatin
        body = (0.7 + 0.3 * _dome(layout, 0.5)) * np.clip(1 + 0.22 * tex, 0.2, None)
        body += 0.6 * spots(rng, fg, 0.004, 1.0)
    else:  # cytoplasmic stain: brighter or darker nucleus, granules in the cytoplasm
        nuc = _nucleus_mask(layout) * rng.choice([-0.45, 0.5])
        body = (0.5 + 0.5 * _dome(layout, 0.6)) * np.clip(1 + 0.3 * tex, 0.1, None) * (1 + nuc)
        body += 0.8 * spots(rng, fg, 0.006, rng.uniform(0.7, 1.3))
    signal = np.where(fg, level * body, 0.0).astype(np.float32)
    haze = ndimage.gaussian_filter(signal, rng.uniform(4, 10)) * rng.uniform(0.05, 0.25)
    background = rng.uniform(0.03, 0.12) * (1 + 0.15 * texture(rng, size, 12.0))
    return signal + haze + background


def _optical_path(
    rng: np.random.Generator, layout: CellLayout, size: int, power: float
) -> np.ndarray:
    """Optical thickness of the cells: dome profile, interior texture, nucleus, granules."""
    fg = layout.foreground
    tex = texture(rng, size, rng.uniform(1.0, 2.5))
    path = _dome(layout, power) * layout.thickness[layout.ids] * (1 + 0.18 * tex)
    path += 0.35 * _nucleus_mask(layout) + 0.5 * spots(rng, fg, 0.004, rng.uniform(0.7, 1.2))
    return np.where(fg, path, 0.0).astype(np.float32)


def _phase_contrast(rng: np.random.Generator, layout: CellLayout, size: int) -> np.ndarray:
    opd = ndimage.gaussian_filter(_optical_path(rng, layout, size, 0.4), 0.7)
    # The phase ring passes low spatial frequencies: their residue is the bright halo outside
    # the edge and the darker rim inside it.
    halo = ndimage.gaussian_filter(opd, rng.uniform(2.0, 4.5)) - opd
    dark, bright = rng.uniform(0.3, 0.55), rng.uniform(0.6, 1.2)
    return np.clip(1.0 - dark * opd + bright * halo, 0.03, None)


def _brightfield(rng: np.random.Generator, layout: CellLayout, size: int) -> np.ndarray:
    absorb = _optical_path(rng, layout, size, 0.5)
    # Unstained cells usually absorb a little; slightly defocused ones look lighter instead,
    # and are then seen mostly by the dark ring that defocus draws around them.
    lighter = rng.random() < 0.25
    contrast = rng.uniform(0.06, 0.15)
    # Defocus draws a dark band inside the edge and a faint bright halo outside. It follows
    # the flat footprint, not the dome, so it stays narrow; the scale-normalised Laplacian
    # peaks near a quarter of the step whatever its width.
    width = rng.uniform(1.0, 2.2)
    footprint = np.where(layout.foreground, layout.thickness[layout.ids], 0.0)
    ring = rng.uniform(2.0, 3.0) if lighter else rng.uniform(0.6, 1.4)
    rim = (width**2) * ndimage.gaussian_laplace(footprint, width) * ring
    dust = 0.01 * texture(rng, size, 3.0)
    tone = 1.0 + contrast * absorb if lighter else 1.0 - contrast * absorb
    return np.clip(tone + contrast * rim + dust, 0.05, None)


def _dic(rng: np.random.Generator, layout: CellLayout, size: int) -> np.ndarray:
    opl = ndimage.gaussian_filter(_optical_path(rng, layout, size, 0.5), rng.uniform(0.8, 1.5))
    grad_y, grad_x = np.gradient(opl)
    shear = rng.uniform(0, 2 * np.pi)
    relief = np.cos(shear) * grad_x + np.sin(shear) * grad_y
    scale = np.percentile(np.abs(relief[layout.foreground]), 99) if layout.count else 1.0
    relief /= max(float(scale), 1e-3)
    return np.clip(1.0 + rng.uniform(0.2, 0.4) * relief, 0.05, None)


RENDERERS: dict[str, Callable[[np.random.Generator, CellLayout, int], np.ndarray]] = {
    "fluorescence": _fluorescence,
    "phase_contrast": _phase_contrast,
    "brightfield": _brightfield,
    "dic": _dic,
}


def camera(rng: np.random.Generator, relative: np.ndarray, modality: str) -> np.ndarray:
    """Blur, shade, count photons and digitise into uint16 with a camera offset."""
    size = relative.shape[0]
    optical = ndimage.gaussian_filter(relative.astype(np.float32), rng.uniform(0.6, 1.6))
    optical *= illumination(rng, size)
    # Transmitted light saturates the well; fluorescence is photon-starved.
    photons_per_unit = (
        rng.uniform(60, 1200) if modality == "fluorescence" else rng.uniform(2e3, 1.2e4)
    )
    photons = rng.poisson(optical.astype(np.float64) * photons_per_unit)
    offset = float(rng.uniform(2000, 30000))
    gain = min(rng.uniform(0.6, 6.0), (_FULL_SCALE - offset) / max(float(photons.max()), 1.0))
    digital = offset + gain * photons + rng.normal(0.0, rng.uniform(2.0, 12.0), photons.shape)
    return np.clip(np.rint(digital), 0, 65535).astype(np.uint16)


def to_rgb8(rng: np.random.Generator, image: np.ndarray, modality: str) -> np.ndarray:
    """Colour 8-bit version of a 16-bit image, as a microscope's RGB snapshot would save it."""
    lo, hi = np.percentile(image, [0.1, 99.95])
    unit = np.clip((image.astype(np.float32) - lo) / max(float(hi - lo), 1.0), 0.0, 1.0)
    if modality == "fluorescence":  # one pseudo-coloured channel (DAPI, GFP, mCherry)
        colour = np.array([(0.2, 0.4, 1.0), (0.1, 1.0, 0.2), (1.0, 0.15, 0.1)])[rng.integers(3)]
        rgb = unit[..., None] * colour
    elif modality == "brightfield":  # warm halogen lamp seen by a colour camera
        rgb = unit[..., None] * np.array([1.0, 0.94, 0.82])
    else:
        rgb = np.repeat(unit[..., None], 3, axis=-1)
    return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)
