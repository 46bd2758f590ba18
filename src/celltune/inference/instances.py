"""Instance label maps: from binary masks, or from the boundary or distance head's outputs.

Binary masks (``binary`` and ``two_class`` heads) are split by connected components or a
distance-transform watershed (:func:`label_instances`). The ``boundary`` head predicts
background / interior / boundary; its cells are decoded by :func:`instances_from_classes`:
each connected interior region seeds one cell, grown over the foreground by a watershed, so
cells the boundary class separates stay apart even where their masks touch. The
``distance`` head predicts the foreground and each cell's normalised distance to its border;
:func:`instances_from_distance` seeds one cell per high-distance region and grows it down the
distance map. All have a windowed form for images of any size with memory bounded by one
window (:func:`label_instances_tiled`, :func:`instances_from_classes_tiled`,
:func:`instances_from_distance_tiled`).

Example:
    >>> import numpy as np
    >>> mask = np.zeros((8, 8), bool); mask[1:4, 1:4] = mask[5:7, 5:7] = True
    >>> label_instances(mask, method="components", min_size=5).max()
    np.int32(1)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage as ndi

from celltune.errors import ConfigError

METHODS = ("components", "watershed")
#: The instance step's parameters before any tuning (see celltune.evaluation.postprocess).
DEFAULT_H = 2.0
DEFAULT_MIN_SIZE = 16
DEFAULT_MIN_FRACTION = 0.0
DEFAULT_SEED_THRESHOLD = 0.5
#: 8-connectivity: pixels touching at a corner belong to the same cell.
_STRUCTURE = np.ones((3, 3), dtype=bool)
#: A window of a 2-D plane: (rows, columns).
Window = tuple[slice, slice]


def label_instances(
    mask: np.ndarray,
    method: str = "watershed",
    min_size: int = 16,
    h: float = 2.0,
    smooth: float = 1.0,
) -> np.ndarray:
    """Split a binary mask into cells.

    ``"components"`` labels 8-connected regions. ``"watershed"`` also splits touching cells:
    each h-maximum of the (slightly smoothed) Euclidean distance transform seeds one cell, so two
    touching discs whose neck is narrower than their radii by more than ``h`` pixels become two
    cells, while the shallow ripples a ragged outline leaves in the distance map seed nothing.
    A region without any such peak stays one cell. Cells smaller than ``min_size`` pixels are
    then removed (including small watershed fragments), and ids are renumbered 1..n.

    Args:
        mask: 2-D mask, bool or numeric (non-zero = foreground).
        method: ``"components"`` or ``"watershed"``.
        min_size: Smallest cell area kept, in pixels (0 or 1 keeps everything).
        h: Watershed only: how far (in pixels of distance) a peak must rise above the saddle
            joining it to a higher peak to seed its own cell. Larger values split less.
        smooth: Watershed only: Gaussian sigma applied to the distance map before peak
            detection (0 disables).

    Returns:
        An int32 label map of the mask's shape, 0 = background, cells 1..n in raster order of
        their first pixel for components (seed order for watershed).

    Raises:
        ConfigError: If ``method`` is unknown.
        ValueError: If ``mask`` is not 2-D.
    """
    fg = np.asarray(mask)
    if fg.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {fg.shape}.")
    fg = fg.astype(bool, copy=False)
    if method == "components":
        labels = ndi.label(fg, structure=_STRUCTURE)[0]
    elif method == "watershed":
        labels = _watershed(fg, h=h, smooth=smooth)
    else:
        raise ConfigError(
            f"Unknown instance method {method!r}; valid methods are: {', '.join(METHODS)}."
        )
    return remove_small(labels, min_size)


def _watershed(fg: np.ndarray, h: float, smooth: float) -> np.ndarray:
    from skimage.segmentation import watershed

    if not fg.any():
        return np.zeros(fg.shape, dtype=np.int32)
    distance = ndi.distance_transform_edt(fg)
    if smooth > 0:
        distance = ndi.gaussian_filter(distance, smooth) * fg
    # Regions shallower than h have no h-maximum; they are seeded whole.
    markers = _markers(h_maxima_by_region(distance, fg, h), fg)
    return watershed(-distance, markers, mask=fg, connectivity=2)


def h_maxima_by_region(distance: np.ndarray, fg: np.ndarray, h: float) -> np.ndarray:
    """scikit-image's ``h_maxima(distance, h) & fg``, computed region by region.

    ``distance`` is 0 off the foreground, so two 8-connected regions are joined only through
    level 0 and a peak's depth (how far it rises above the saddle to a higher peak) never
    depends on another region: each region's h-maxima are found in its bounding box grown by
    one pixel (which holds that 0 level, and cuts other regions only where they are apart from
    it). The result is the whole image's, without the reconstruction over every background
    pixel that dominated the cost (6.5x faster on Coelho's 1030 x 1349 masks;
    tests/test_instances.py checks the equality).
    """
    from skimage.morphology import h_maxima

    regions, _ = ndi.label(fg, structure=_STRUCTURE)
    seeds = np.zeros(fg.shape, dtype=bool)
    for k, box in enumerate(ndi.find_objects(regions), start=1):
        if box is None:
            continue
        box = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in box)
        seeds[box] |= h_maxima(distance[box], h).astype(bool) & (regions[box] == k)
    return seeds


def _markers(seeds: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """Label the 8-connected ``seeds``; a foreground region without any seed becomes one
    marker of its own, so no cell disappears for want of a seed."""
    components, n_components = ndi.label(fg, structure=_STRUCTURE)
    markers, n_markers = ndi.label(seeds, structure=_STRUCTURE)
    seeded = np.zeros(n_components + 1, dtype=bool)
    seeded[components[markers > 0]] = True
    unseeded = ~seeded[components] & fg
    markers[unseeded] = components[unseeded] + n_markers
    return markers


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Drop cells below ``min_size`` pixels and renumber the rest 1..n in id order (int32)."""
    labels = np.asarray(labels)
    if labels.size == 0 or labels.max() == 0:
        return np.zeros(labels.shape, dtype=np.int32)
    areas = np.bincount(labels.ravel())
    keep = areas >= max(min_size, 1)
    keep[0] = False
    lut = np.zeros(areas.size, dtype=np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[labels]


def typical_area(labels: np.ndarray) -> float:
    """The area of the cell a labelled pixel typically belongs to: the area-weighted median
    of the cells' areas (0 without cells). Many small fragments barely move it, unlike the
    plain median."""
    return typical_of_areas(np.bincount(np.asarray(labels).ravel())[1:])


def typical_of_areas(areas: np.ndarray) -> float:
    """:func:`typical_area` from the cells' areas (zeros ignored), for label maps counted
    piece by piece.

    Example:
        >>> typical_of_areas(np.array([1, 1, 100]))
        100.0
    """
    areas = np.asarray(areas)
    areas = np.sort(areas[areas > 0]).astype(np.float64)
    if areas.size == 0:
        return 0.0
    weight = np.cumsum(areas)
    return float(areas[np.searchsorted(weight, weight[-1] / 2)])


def relative_min_size(areas: np.ndarray, fraction: float) -> int:
    """The smallest area, in pixels, that :func:`remove_relative` keeps among cells of these
    ``areas``: ``fraction`` of their typical area, rounded up (at least 1)."""
    return max(int(np.ceil(fraction * typical_of_areas(areas))), 1)


def remove_relative(labels: np.ndarray, fraction: float) -> np.ndarray:
    """Drop cells smaller than ``fraction`` of the map's :func:`typical_area` and renumber
    1..n; a size rule that follows the cells' scale from image to image."""
    if fraction <= 0:
        return np.asarray(labels)
    areas = np.bincount(np.asarray(labels).ravel())[1:]
    return remove_small(labels, relative_min_size(areas, fraction))


def label_instances_tiled(
    mask: np.ndarray,
    method: str = "watershed",
    min_size: int = 16,
    tile: int = 2048,
    margin: int = 128,
    **options: float,
) -> np.ndarray:
    """:func:`label_instances` for masks of any size, with memory bounded by one window.

    The watershed needs about 100 bytes per pixel, 10 GB for a 10000×10000 slide. Here the
    mask is cut into ``tile``-sized cores; each core is labelled inside a window that adds
    ``margin`` pixels of context on every side, and keeps the cells whose centroid lies in
    its core. A cell narrower than ``margin`` is therefore labelled with all of its pixels
    and the same neighbours as in a whole-mask labelling; only ties on the line between two
    touching cells can fall differently. Masks up to one window are labelled whole.

    Args:
        mask: 2-D mask (non-zero = foreground).
        method, min_size, options: as for :func:`label_instances`.
        tile: core side in pixels.
        margin: context added around each core; use more than the largest cell diameter.

    Returns:
        int32 labels, cells numbered 1..n in tile order.
    """
    fg = np.asarray(mask).astype(bool, copy=False)
    if fg.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {fg.shape}.")
    return label_by_windows(
        fg.shape,
        lambda window: label_instances(fg[window], method=method, min_size=min_size, **options),
        tile=tile,
        margin=margin,
    )


def label_by_windows(
    shape: tuple[int, int],
    label_window: Callable[[Window], np.ndarray],
    tile: int = 2048,
    margin: int = 128,
) -> np.ndarray:
    """Assemble a label map of ``shape`` from labellings of overlapping windows.

    The plane is cut into ``tile``-sized cores; ``label_window`` labels each core plus
    ``margin`` pixels of context on every side (a 2-D slice pair into the full plane), and the
    core keeps the cells whose centroid lies inside it, with ids following on from the cores
    before it, so ids are unique over the whole map. A pixel claimed by two windows (a cell
    reaching across a core edge) stays with the first. Planes up to one window are labelled
    whole, in one call.

    Returns:
        int32 labels, cells numbered 1..n in tile order (raster order of the cores).
    """
    height, width = shape
    if height <= tile + 2 * margin and width <= tile + 2 * margin:
        return label_window((slice(0, height), slice(0, width))).astype(np.int32, copy=False)
    out = np.zeros(shape, dtype=np.int32)
    next_id = 0
    for y0 in range(0, height, tile):
        for x0 in range(0, width, tile):
            wy, wx = max(0, y0 - margin), max(0, x0 - margin)
            window = (slice(wy, min(height, y0 + tile + margin)),
                      slice(wx, min(width, x0 + tile + margin)))
            cells = label_window(window)
            lut = _cells_centred_in(cells, (y0 - wy, x0 - wx), tile, next_id)
            next_id += int(np.count_nonzero(lut))
            new = lut[cells]
            free = (new > 0) & (out[window] == 0)
            out[window][free] = new[free]
    return out


def _cells_centred_in(
    cells: np.ndarray, core_origin: tuple[int, int], tile: int, first_id: int
) -> np.ndarray:
    """Lookup table giving new ids to the cells whose centroid lies in the core, 0 to others."""
    n = int(cells.max())
    lut = np.zeros(n + 1, dtype=np.int32)
    if n == 0:
        return lut
    ys, xs = np.nonzero(cells)
    ids = cells[ys, xs]
    area = np.bincount(ids, minlength=n + 1).astype(np.float64)
    area[0] = 1.0
    cy = np.bincount(ids, weights=ys, minlength=n + 1) / area
    cx = np.bincount(ids, weights=xs, minlength=n + 1) / area
    oy, ox = core_origin
    inside = (cy >= oy) & (cy < oy + tile) & (cx >= ox) & (cx < ox + tile)
    inside[0] = False
    lut[inside] = np.arange(first_id + 1, first_id + 1 + int(inside.sum()), dtype=np.int32)
    return lut


def _check_channels(probs: np.ndarray, channels: int, meaning: str) -> np.ndarray:
    """``probs`` as an array of shape ``(channels, H, W)``; ValueError naming ``meaning``."""
    arr = np.asarray(probs)
    if arr.ndim != 3 or arr.shape[0] != channels:
        raise ValueError(f"expected {meaning}, got shape {arr.shape}.")
    return arr


def _check_classes(probs: np.ndarray) -> np.ndarray:
    return _check_channels(
        probs, 3, "class probabilities (3, H, W) for background / interior / boundary")


def class_foreground(probs: np.ndarray) -> np.ndarray:
    """Foreground probability ``1 - P(background)`` of ``(3, H, W)`` class probabilities,
    float32, the same rule as :func:`celltune.models.build.foreground_probability`."""
    return np.float32(1.0) - _check_classes(probs)[0].astype(np.float32, copy=False)


def instances_from_classes(
    probs: np.ndarray,
    seed_threshold: float = 0.5,
    fg_threshold: float = 0.5,
    min_size: int = 16,
) -> np.ndarray:
    """Decode the ``boundary`` head's class probabilities into cells.

    The foreground is where ``1 - P(background) >= fg_threshold``. Each 8-connected region
    where ``P(interior) >= seed_threshold`` (inside the foreground) seeds one cell; the seeds
    grow over the foreground by a watershed on ``-P(interior)``, so the boundary pixels
    between two touching cells go to the interior that reaches them first. A foreground
    region without any seed (a cell predicted as all boundary) stays one cell. Cells smaller
    than ``min_size`` pixels are then removed and ids renumbered 1..n.

    Args:
        probs: ``(3, H, W)`` probabilities of background, interior and boundary (a softmax).
        seed_threshold: Smallest interior probability of a seed pixel.
        fg_threshold: Smallest foreground probability of a cell pixel (the run's threshold).
        min_size: Smallest cell area kept, in pixels (0 or 1 keeps everything).

    Returns:
        An int32 label map ``(H, W)``, 0 = background, cells 1..n in seed order.

    Raises:
        ValueError: ``probs`` is not ``(3, H, W)``.
    """
    p = _check_classes(probs)
    return _grow_seeds(class_foreground(p) >= fg_threshold, p[1], seed_threshold, min_size)


def _grow_seeds(
    fg: np.ndarray, height: np.ndarray, seed_threshold: float, min_size: int
) -> np.ndarray:
    """Cells of the foreground ``fg`` grown from the regions where ``height`` (an instance
    head's interior probability or distance) reaches ``seed_threshold``, by a watershed on
    ``-height``; a region without a seed is one cell; small cells dropped, ids 1..n."""
    from skimage.segmentation import watershed

    if not fg.any():
        return np.zeros(fg.shape, dtype=np.int32)
    height = height.astype(np.float32, copy=False)
    markers = _markers((height >= seed_threshold) & fg, fg)
    labels = watershed(-height, markers, mask=fg, connectivity=2)
    return remove_small(labels, min_size)


def instances_from_classes_tiled(
    probs: np.ndarray,
    seed_threshold: float = 0.5,
    fg_threshold: float = 0.5,
    min_size: int = 16,
    tile: int = 2048,
    margin: int = 128,
) -> np.ndarray:
    """:func:`instances_from_classes` for images of any size, memory bounded by one window.

    Windows of ``tile`` + 2 ``margin`` pixels are decoded one at a time and each cell is kept
    by the core holding its centroid (:func:`label_by_windows`), so a cell narrower than
    ``margin`` gets the same pixels as in a whole-image decoding. Only exact ties can fall
    differently: where the interior probability is flat (one-hot inputs, or a network
    saturated to identical float32 values) the watershed's flooding order decides which of
    two touching cells takes a contact pixel, and that order depends on the window, so such
    a pixel can change cell or be left unlabelled. Use a margin wider than the largest cell.

    Returns:
        int32 labels, cells numbered 1..n in tile order.
    """
    p = _check_classes(probs)
    return label_by_windows(
        p.shape[1:],
        lambda window: instances_from_classes(
            p[(slice(None), *window)], seed_threshold, fg_threshold, min_size
        ),
        tile=tile,
        margin=margin,
    )


def _check_distance(prob2: np.ndarray) -> np.ndarray:
    return _check_channels(
        prob2, 2, "the distance head's probabilities (2, H, W): foreground and normalised "
        "distance")


def distance_foreground(prob2: np.ndarray) -> np.ndarray:
    """Foreground probability of the distance head's ``(2, H, W)`` output: its channel 0,
    float32, the same rule as :func:`celltune.models.build.foreground_probability`."""
    return _check_distance(prob2)[0].astype(np.float32)


def instances_from_distance(
    prob2: np.ndarray,
    seed_threshold: float = 0.5,
    fg_threshold: float = 0.5,
    min_size: int = 16,
) -> np.ndarray:
    """Decode the ``distance`` head's output into cells.

    The foreground is where ``P(foreground) >= fg_threshold``. Each 8-connected region where
    the predicted normalised distance is ``>= seed_threshold`` (inside the foreground) seeds
    one cell; the seeds grow over the foreground by a watershed on ``-distance``, so the
    low-distance pixels where two cells touch go to the peak that reaches them first. A
    foreground region without any seed stays one cell. Cells smaller than ``min_size`` pixels
    are then removed and ids renumbered 1..n.

    Args:
        prob2: ``(2, H, W)``: foreground probability and normalised distance (both sigmoids).
        seed_threshold: Smallest normalised distance of a seed pixel.
        fg_threshold: Smallest foreground probability of a cell pixel (the run's threshold).
        min_size: Smallest cell area kept, in pixels (0 or 1 keeps everything).

    Returns:
        An int32 label map ``(H, W)``, 0 = background, cells 1..n in seed order.

    Raises:
        ValueError: ``prob2`` is not ``(2, H, W)``.
    """
    p = _check_distance(prob2)
    return _grow_seeds(p[0] >= fg_threshold, p[1], seed_threshold, min_size)


def instances_from_distance_tiled(
    prob2: np.ndarray,
    seed_threshold: float = 0.5,
    fg_threshold: float = 0.5,
    min_size: int = 16,
    tile: int = 2048,
    margin: int = 128,
) -> np.ndarray:
    """:func:`instances_from_distance` for images of any size, memory bounded by one window.

    Decoded window by window through :func:`label_by_windows`, each cell kept by the core
    holding its centroid; as for :func:`instances_from_classes_tiled`, a cell narrower than
    ``margin`` gets the same pixels as in a whole-image decoding, except where exact ties in
    the distance map let the flooding order (which depends on the window) decide a contact
    pixel. Use a margin wider than the largest cell.

    Returns:
        int32 labels, cells numbered 1..n in tile order.
    """
    p = _check_distance(prob2)
    return label_by_windows(
        p.shape[1:],
        lambda window: instances_from_distance(
            p[(slice(None), *window)], seed_threshold, fg_threshold, min_size
        ),
        tile=tile,
        margin=margin,
    )
