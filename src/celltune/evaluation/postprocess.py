"""Choose the instance step's parameters on validation by instance F1.

The foreground threshold is chosen for Dice (:mod:`celltune.evaluation.threshold`); the step
that turns the mask into cells has parameters of its own, and pixel Dice cannot see them:
the watershed's ``h`` for heads that predict a mask (how deep a dip in the distance map must
be to split two cells), the seed threshold for heads that predict cell interiors, and the
size filter that drops fragments. :class:`PostprocessSweep` matches every combination's cells
to the true cells of each validation image by the NeurIPS 2022 challenge's rules (IoU 0.5)
and keeps the one with the best F1 over all validation cells: true positives, false
positives and misses summed over the images before F1 is taken. Ties go to the defaults, then
to the earlier candidate. The mask threshold is not swept here, so the cells always cover the
mask the Dice sweep chose.

Why cells and not the mean of per-image F1 (what the challenge reports, and what evaluate
reports): with a handful of validation images, one image of a dozen cells moves a mean of
per-image F1 as much as one of two hundred, and the choice follows it. Choosing on random
validation subsets and scoring the rest (BENCHMARKS.md, "Instance step and heads") gave a
smaller loss against the best choice with the summed counts on synthetic images (six
validation images: 0.009 vs 0.016 F1, five networks) and the same within 0.001 on the three
development sets. The per-image mean of each combination is kept beside it (``f1_mean``).

``h`` runs over 0.25 ... 16 pixels up to ``max(2, r)`` (``r`` the validation cells' median
radius), plus plain connected components. The size filters are nothing, the default 16
pixels, or a tenth or a quarter of each image's own typical cell area
(:func:`~celltune.inference.instances.typical_area`): a relative rule, because cells in
the images a run is used on need not have the validation cells' size (on ctc_msc the test
movie's cells are a quarter of the validation movie's; an absolute size tuned on
validation deleted half of them).

Example:
    >>> import numpy as np
    >>> truth = np.zeros((20, 20), np.int32); truth[2:8, 2:8] = 1; truth[12:18, 12:18] = 2
    >>> sweep = PostprocessSweep([{"h": 1.0}, {"h": 2.0}], FILTERS, default_params(False))
    >>> sweep.add(truth, lambda params: truth)
    >>> sweep.result(head="binary", parameter="h").best  # a tie: the default stays
    {'method': 'watershed', 'h': 2.0, 'min_size': 16, 'min_fraction': 0.0}
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from celltune.evaluation.metrics import dice, instance_scores
from celltune.inference.instances import (
    DEFAULT_H,
    DEFAULT_MIN_FRACTION,
    DEFAULT_MIN_SIZE,
    DEFAULT_SEED_THRESHOLD,
    remove_relative,
    remove_small,
)

CRITERION = ("F1 at IoU 0.5 over all validation cells (matches, false cells and misses summed "
             "over the images; NeurIPS 2022 challenge matching)")
#: Watershed depths tried for mask heads, in pixels of distance.
H_GRID = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
#: Interior probabilities tried as seed thresholds for seeded heads.
SEED_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
#: Size filters tried: an absolute smallest cell (pixels), then a fraction of the image's
#: typical cell area.
FILTERS = (
    {"min_size": 0, "min_fraction": 0.0},
    {"min_size": DEFAULT_MIN_SIZE, "min_fraction": DEFAULT_MIN_FRACTION},
    {"min_size": 0, "min_fraction": 0.1},
    {"min_size": 0, "min_fraction": 0.25},
)
_TIE = 1e-9


@dataclass(frozen=True)
class PostprocessResult:
    """A post-processing sweep: F1 per candidate and smallest cell, and the choice.

    Attributes:
        head: The run's head.
        parameter: The swept parameter of the decoding (``h`` or ``seed_threshold``).
        candidates: Decoding parameters tried (without the size filter), in sweep order.
        filters: Size filters tried (``min_size`` in pixels, ``min_fraction`` of the typical
            cell area).
        f1: F1 at IoU 0.5 over all validation cells (the criterion),
            ``f1[candidate][filter]``.
        best: The chosen parameters, the filter's included (what the Predictor takes).
        best_f1: ``f1`` of ``best``.
        default: The parameters before tuning; ``default_f1`` their ``f1``.
        n_images: Validation images scored.
        median_cell_area: Median area of the validation cells the grids were sized from.
        f1_mean: Mean of the per-image F1 at IoU 0.5, ``f1_mean[candidate][filter]`` (the
            challenge's summary, reported beside the criterion).
    """

    head: str
    parameter: str
    candidates: list[dict[str, Any]]
    filters: list[dict[str, Any]]
    f1: list[list[float]]
    best: dict[str, Any]
    best_f1: float
    default: dict[str, Any]
    default_f1: float
    n_images: int
    median_cell_area: float = math.nan
    criterion: str = CRITERION
    f1_mean: list[list[float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """Indented JSON, the content of ``postprocess.json``."""
        data = asdict(self)
        if not math.isfinite(self.median_cell_area):
            data["median_cell_area"] = None
        return json.dumps(data, indent=2) + "\n"


def default_params(seeded: bool) -> dict[str, Any]:
    """The instance step's parameters before tuning."""
    decode = {"seed_threshold": DEFAULT_SEED_THRESHOLD} if seeded else {"h": DEFAULT_H}
    return {"method": "watershed", **decode, "min_size": DEFAULT_MIN_SIZE,
            "min_fraction": DEFAULT_MIN_FRACTION}


def cell_areas(labels: np.ndarray) -> np.ndarray:
    """Area in pixels of every cell of a label map (ids without pixels left out)."""
    areas = np.bincount(np.asarray(labels).ravel())[1:]
    return areas[areas > 0]


def median_cell_area(areas: Sequence[np.ndarray]) -> float:
    """Median of all cells' areas (arrays from :func:`cell_areas`); NaN when there are none."""
    flat = np.concatenate(list(areas)) if len(areas) else np.zeros(0)
    return float(np.median(flat)) if flat.size else math.nan


def grids(seeded: bool, area: float) -> list[dict[str, Any]]:
    """Decoding candidates for cells of median ``area`` pixels (NaN: unknown)."""
    if seeded:
        return [{"method": "watershed", "seed_threshold": t} for t in SEED_GRID]
    radius = math.sqrt(area / math.pi) if math.isfinite(area) else 0.0
    limit = max(DEFAULT_H, radius)
    candidates = [{"method": "watershed", "h": h} for h in H_GRID if h <= limit]
    return [*candidates, {"method": "components"}]


def apply_filter(cells: np.ndarray, size_filter: dict[str, Any]) -> np.ndarray:
    """``cells`` without those the filter drops (the absolute size first, then the relative)."""
    kept = remove_small(cells, int(size_filter.get("min_size", 0)))
    return remove_relative(kept, float(size_filter.get("min_fraction", 0.0)))


class PostprocessSweep:
    """Scores decoding candidates image by image; :meth:`result` picks the best F1 over all
    the images' cells.

    Args:
        candidates: Decoding parameters to try (the size filter is swept separately).
        filters: Size filters to try (``min_size``, ``min_fraction``); applied to each
            candidate's cells.
        default: The untuned parameters, its filter included; they win ties.
    """

    def __init__(
        self,
        candidates: Sequence[dict[str, Any]],
        filters: Sequence[dict[str, Any]],
        default: dict[str, Any],
    ) -> None:
        if not candidates or not filters:
            raise ValueError("a post-processing sweep needs candidates and filters.")
        self.candidates = [dict(c) for c in candidates]
        self.filters = [_filter(f) for f in filters]
        self.default = {**default, **_filter(default)}
        self._counts: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self._counts)

    def add(
        self, truth: np.ndarray, decode: Callable[[dict[str, Any]], np.ndarray]
    ) -> None:
        """Score one image: ``decode(params)`` gives its cells (every size kept) per candidate."""
        # Matched, false and missed cells (tp, fp, fn; tn is 0 for instances).
        counts = np.zeros((len(self.candidates), len(self.filters), 4), dtype=np.int64)
        for i, params in enumerate(self.candidates):
            cells = decode(params)
            for j, size_filter in enumerate(self.filters):
                s = instance_scores(truth, apply_filter(cells, size_filter), (0.5,))
                counts[i, j, :3] = s["tp"][0], s["fp"][0], s["fn"][0]
        self._counts.append(counts)

    def result(self, head: str, parameter: str, **extra: Any) -> PostprocessResult:
        """The sweep's F1 tables and the best parameters (ties: the default, then the first)."""
        if not self._counts:
            raise ValueError("no images were added to the post-processing sweep.")
        # F1 is the Dice formula on cell counts, with the same empty rule.
        pooled = np.asarray(dice(np.sum(self._counts, axis=0)))
        per_image = np.mean([dice(c) for c in self._counts], axis=0)
        best_i, best_j = np.unravel_index(int(np.argmax(pooled)), pooled.shape)
        # Complete parameters: a candidate without ``h`` (components) keeps the default's.
        best = {**self.default, **self.candidates[best_i], **self.filters[best_j]}
        best_f1 = float(pooled[best_i, best_j])
        default_f1 = self._value_of(pooled, self.default)
        if default_f1 is not None and default_f1 >= best_f1 - _TIE:
            best, best_f1 = dict(self.default), default_f1
        area = extra.pop("median_cell_area", math.nan)
        return PostprocessResult(
            head=head, parameter=parameter, candidates=self.candidates,
            filters=self.filters, f1=pooled.round(6).tolist(), best=best,
            best_f1=best_f1, default=self.default,
            default_f1=float(default_f1) if default_f1 is not None else math.nan,
            n_images=len(self._counts), median_cell_area=float(area),
            f1_mean=per_image.round(6).tolist(), extra=extra,
        )

    def _value_of(self, table: np.ndarray, params: dict[str, Any]) -> float | None:
        """``table``'s value for ``params`` if the sweep tried them, else None."""
        decode = {k: v for k, v in params.items() if k not in _FILTER_KEYS}
        size_filter = _filter(params)
        for i, candidate in enumerate(self.candidates):
            if _same(candidate, decode) and size_filter in self.filters:
                return float(table[i, self.filters.index(size_filter)])
        return None


_FILTER_KEYS = ("min_size", "min_fraction")


def _filter(params: dict[str, Any]) -> dict[str, Any]:
    """The size filter of ``params``, defaults filled in, as comparable values."""
    return {"min_size": int(params.get("min_size", DEFAULT_MIN_SIZE)),
            "min_fraction": float(params.get("min_fraction", DEFAULT_MIN_FRACTION))}


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal decoding parameters, ``method`` defaulting to watershed."""
    a = {"method": "watershed", **a}
    b = {"method": "watershed", **b}
    return a == b
