"""Cell geometry for the synthetic generator: sample shapes, place them, rasterise exact labels.

Every cell is a star-shaped blob: an ellipse whose radius is perturbed by a few random angular
harmonics. Cells are painted in order, a later cell covering an earlier one, into a
:class:`CellLayout` that records, for each pixel, which cell is on top and where in that cell
the pixel lies (a normalised radius). The renderers derive every intensity from this layout, so
the instance labels match the drawn cells exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.spatial import cKDTree

# int16 labels hold ids up to 32767; leave headroom and keep 1024² images fast.
MAX_CELLS = 20_000
_HARMONICS = np.arange(2, 7)
# Pixels outside any nucleus get this normalised nucleus radius (anything > 1 means "outside").
OUTSIDE = np.float32(9.0)


@dataclass(frozen=True)
class LayoutParams:
    """Per-image statistics of the cell population (saved to ``synthetic.json``)."""

    mean_radius: float
    radius_spread: float
    aspect: float
    irregularity: float
    coverage: float
    min_separation: float
    clusters: int
    nucleus_ratio: float

    def to_json(self) -> dict[str, float | int]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Blob:
    """A perturbed ellipse: semi-axes, rotation (radians) and radial harmonics k = 2, 3, ...

    Its edge is ``r(θ) = 1 + Re Σ c_k exp(i k θ)`` in the frame where the ellipse is a unit
    circle; keep ``Σ |c_k| < 1`` so the shape stays star-shaped around its centre.
    """

    axes: tuple[float, float]
    angle: float = 0.0
    coeffs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.complex128))


@dataclass(frozen=True)
class Cell:
    """One cell: ``centre`` is ``(x, y)`` in pixels; the nucleus offset is in the body frame."""

    centre: tuple[float, float]
    body: Blob
    nucleus: Blob | None = None
    nucleus_offset: tuple[float, float] = (0.0, 0.0)


@dataclass
class CellLayout:
    """Per-pixel description of which cell is drawn on top, before any optics.

    Attributes:
        ids: int32 ``(H, W)``; consecutive cell ids 1..K of the visible cells, 0 = background.
        radial: float32 ``(H, W)``; 0 at the top cell's centre, 1 at its boundary, 1 outside.
        nucleus: float32 ``(H, W)``; the same inside the top cell's nucleus, > 1 elsewhere.
        brightness: float32 ``(K + 1,)``; per-cell stain/expression level (index 0 unused).
        thickness: float32 ``(K + 1,)``; per-cell optical thickness (index 0 unused).
        drawn: number of cells painted, including fully occluded ones that were dropped.
    """

    ids: np.ndarray
    radial: np.ndarray
    nucleus: np.ndarray
    brightness: np.ndarray
    thickness: np.ndarray
    drawn: int

    @property
    def count(self) -> int:
        """Number of visible cells (= the largest label id)."""
        return len(self.brightness) - 1

    @property
    def foreground(self) -> np.ndarray:
        return self.ids > 0


def sample_params(rng: np.random.Generator, size: int, nuclei_only: bool = False) -> LayoutParams:
    """Draw the cell population of one image: size, shape, density and crowding all vary."""
    # Radii 4-30 px at 256² and above; smaller images shrink them so a few cells still fit.
    scale = min(1.0, size / 256)
    elongated = rng.random() < 0.25
    return LayoutParams(
        mean_radius=float(np.exp(rng.uniform(np.log(4.0), np.log(30.0))) * max(scale, 0.3)),
        radius_spread=float(rng.uniform(0.08, 0.3)),
        aspect=float(rng.uniform(1.8, 3.2) if elongated else rng.uniform(1.0, 1.5)),
        irregularity=float(rng.uniform(0.0, 0.07) if elongated else rng.uniform(0.02, 0.22)),
        coverage=float(rng.uniform(0.15, 0.6)),
        min_separation=float(rng.uniform(0.55, 0.95)),
        clusters=int(rng.integers(0, 6)),
        nucleus_ratio=0.0 if nuclei_only else float(rng.uniform(0.3, 0.55)),
    )


def _sample_centres(
    rng: np.random.Generator, size: int, count: int, params: LayoutParams, margin: float
) -> np.ndarray:
    """Candidate centres: uniform, or a mix of uniform and Gaussian clusters (colonies)."""
    centres = rng.uniform(-margin, size + margin, size=(count, 2))
    if params.clusters:
        heads = rng.uniform(0, size, size=(params.clusters, 2))
        spread = rng.uniform(2.0, 6.0) * params.mean_radius
        which = rng.integers(0, params.clusters, size=count)
        clustered = heads[which] + rng.normal(0, spread, size=(count, 2))
        use = rng.random(count) < 0.7
        centres[use] = clustered[use]
    return centres


def _accept_separated(
    centres: np.ndarray, radii: np.ndarray, min_sep: float, limit: int
) -> list[int]:
    """Greedily keep candidates (in order) whose centres are not too close to kept ones.

    Cells may touch and overlap partially, but a candidate closer than ``min_sep`` times the
    summed radii of a kept cell is skipped so that no cell swallows another entirely.
    """
    tree = cKDTree(centres)
    pairs = tree.query_pairs(r=2.0 * min_sep * float(radii.max()), output_type="ndarray")
    if len(pairs):
        dist = np.linalg.norm(centres[pairs[:, 0]] - centres[pairs[:, 1]], axis=1)
        pairs = pairs[dist < min_sep * (radii[pairs[:, 0]] + radii[pairs[:, 1]])]
    neighbours: list[list[int]] = [[] for _ in range(len(centres))]
    for a, b in pairs.tolist():
        neighbours[max(a, b)].append(min(a, b))
    kept = np.zeros(len(centres), dtype=bool)
    order: list[int] = []
    for i in range(len(centres)):
        if len(order) >= limit:
            break
        if not any(kept[j] for j in neighbours[i]):
            kept[i] = True
            order.append(i)
    return order


def _star_radius(xs: np.ndarray, ys: np.ndarray, blob: Blob) -> np.ndarray:
    """Normalised radius of points (relative to the blob centre): 1 on the blob's edge."""
    cos, sin = np.cos(blob.angle), np.sin(blob.angle)
    xr = (xs * cos + ys * sin) / blob.axes[0]
    yr = (ys * cos - xs * sin) / blob.axes[1]
    rho = np.hypot(xr, yr)
    z = (xr + 1j * yr) / np.maximum(rho, 1e-6)
    # r(θ) = 1 + Re Σ c_k e^{ikθ}, k = 2, 3, ...: powers of a unit complex number avoid atan2.
    wave = np.zeros_like(rho)
    power = z * z
    for c in blob.coeffs:
        wave += (c * power).real
        power = power * z
    return (rho / (1.0 + wave)).astype(np.float32)


def _random_cell(
    rng: np.random.Generator, centre: np.ndarray, radius: float, p: LayoutParams
) -> Cell:
    aspect = p.aspect * rng.uniform(0.8, 1.2)
    amps = p.irregularity * rng.uniform(0.3, 1.0, len(_HARMONICS)) / np.sqrt(_HARMONICS - 1)
    a, b = radius * np.sqrt(aspect), radius / np.sqrt(aspect)
    angle = float(rng.uniform(0, np.pi))
    body = Blob((a, b), angle, amps * np.exp(1j * rng.uniform(0, 2 * np.pi, len(_HARMONICS))))
    if p.nucleus_ratio <= 0:
        return Cell((float(centre[0]), float(centre[1])), body)
    r = p.nucleus_ratio * rng.uniform(0.85, 1.15)
    # Nuclei are rounder than their cells and sit off-centre, but stay inside the body.
    side = np.sqrt(a * b) * r
    axes = (min(side * rng.uniform(1.0, 1.25), a * r * 1.3), min(side, b * 0.9))
    wobble = 0.04 * np.exp(1j * rng.uniform(0, 2 * np.pi, len(_HARMONICS))) / _HARMONICS
    nucleus = Blob(axes, angle + float(rng.normal(0, 0.2)), wobble)
    offset = (rng.uniform(-0.4, 0.4) * (1 - r) * a, rng.uniform(-0.4, 0.4) * (1 - r) * b)
    return Cell((float(centre[0]), float(centre[1])), body, nucleus, offset)


def _paint(layout: CellLayout, cell_id: int, cell: Cell) -> None:
    size_y, size_x = layout.ids.shape
    cx, cy = cell.centre
    reach = max(cell.body.axes) * (1.0 + float(np.abs(cell.body.coeffs).sum())) + 1.0
    y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 2, size_y)
    x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 2, size_x)
    if y0 >= y1 or x0 >= x1:
        return
    ys = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cy)
    xs = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(cx)
    u = _star_radius(xs, ys, cell.body)
    inside = u < 1.0
    window = (slice(y0, y1), slice(x0, x1))
    layout.ids[window][inside] = cell_id
    layout.radial[window][inside] = u[inside]
    if cell.nucleus is None:
        layout.nucleus[window][inside] = OUTSIDE
        return
    cos, sin = np.cos(cell.body.angle), np.sin(cell.body.angle)
    ox, oy = cell.nucleus_offset
    un = _star_radius(xs - (ox * cos - oy * sin), ys - (ox * sin + oy * cos), cell.nucleus)
    layout.nucleus[window][inside] = un[inside]


def rasterize(
    size: int,
    cells: Sequence[Cell],
    brightness: np.ndarray | None = None,
    thickness: np.ndarray | None = None,
) -> CellLayout:
    """Paint ``cells`` in order (later ones on top) into a ``size``×``size`` layout.

    A pixel belongs to a cell when its centre (integer coordinates) lies strictly inside the
    cell's outline. Cells left with no pixel (fully covered or outside the image) are dropped
    and the rest renumbered 1..K in drawing order; ``brightness`` and ``thickness`` (one value
    per cell, default 1) are filtered alike.
    """
    layout = CellLayout(
        ids=np.zeros((size, size), np.int32),
        radial=np.ones((size, size), np.float32),
        nucleus=np.full((size, size), OUTSIDE, np.float32),
        brightness=np.zeros(0, np.float32),
        thickness=np.zeros(0, np.float32),
        drawn=len(cells),
    )
    for cell_id, cell in enumerate(cells, start=1):
        _paint(layout, cell_id, cell)
    ones = np.ones(len(cells))
    brightness = np.concatenate([[0.0], ones if brightness is None else brightness])
    thickness = np.concatenate([[0.0], ones if thickness is None else thickness])
    area = np.bincount(layout.ids.ravel(), minlength=len(cells) + 1)
    visible = area > 0
    visible[0] = True
    layout.ids = (np.cumsum(visible) - 1)[layout.ids].astype(np.int32)
    layout.brightness = brightness[visible].astype(np.float32)
    layout.thickness = thickness[visible].astype(np.float32)
    return layout


def build_layout(rng: np.random.Generator, size: int, params: LayoutParams) -> CellLayout:
    """Place and rasterise the random cells of one ``size``×``size`` image."""
    cell_area = np.pi * params.mean_radius**2
    target = int(np.clip(round(params.coverage * size * size / cell_area), 1, MAX_CELLS))
    candidates = target * 3 + 8
    radii = params.mean_radius * np.exp(rng.normal(0, params.radius_spread, candidates))
    radii = np.maximum(radii, 2.5)
    centres = _sample_centres(rng, size, candidates, params, margin=params.mean_radius)
    order = _accept_separated(centres, radii, params.min_separation, target)
    cells = [_random_cell(rng, centres[i], float(radii[i]), params) for i in order]
    # Expression varies a lot between cells (some are dim), thickness much less.
    brightness = rng.lognormal(0.0, 0.45, len(cells))
    thickness = rng.uniform(0.7, 1.3, len(cells))
    return rasterize(size, cells, brightness, thickness)
