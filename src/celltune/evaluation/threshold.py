"""Choose the probability threshold on validation data, cheaply and exactly.

Each image is reduced once to two cumulative histograms over ``bins`` equal bins of [0, 1]:
how many foreground and how many background pixels have probability ``>= k / bins``. The
confusion counts at any threshold on that grid are then two look-ups, so a sweep over any
number of thresholds costs no more pixel passes, and :class:`ThresholdAccumulator` never
holds a probability map (memory is ``2 * (bins + 1)`` integers per image).

Convention: a pixel is predicted foreground when ``prob >= threshold`` (compared in float64).
Thresholds are snapped to the grid ``k / bins``; the defaults (step 0.05, refinement step 0.01,
2000 bins) lie on it exactly, so the counts equal a direct computation.

Example:
    >>> import numpy as np
    >>> prob = np.array([[0.1, 0.4], [0.6, 0.9]]); mask = prob > 0.5
    >>> r = sweep([prob], [mask], start=0.1, stop=0.9, step=0.1, refine=False)
    >>> round(r.best_threshold, 2), r.best_dice
    (0.5, 1.0)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from celltune.errors import RunError
from celltune.evaluation.metrics import EMPTY_RULE, dice
from celltune.io import write_text

DEFAULT_BINS = 2000
CONVENTION = "a pixel is foreground when its probability >= the threshold"
CRITERION = "mean per-image Dice"
# Dice values closer than this are ties; ties go to the threshold nearest 0.5.
_TIE = 1e-12
_CHUNK = 1 << 22
# Blended tiles can overshoot [0, 1] by rounding; such values are binned as 0 or 1.
_SLACK = 1e-5


@dataclass(frozen=True)
class ThresholdResult:
    """A threshold sweep: the Dice curve and the chosen threshold.

    Attributes:
        thresholds: Every threshold evaluated (coarse grid and refinement), ascending.
        dice: Mean per-image Dice at each threshold.
        best_threshold: The chosen threshold (highest Dice; ties -> nearest 0.5, then lower).
        best_dice: Mean per-image Dice at ``best_threshold``.
        n_images: Number of images the sweep used.
        bins: Histogram resolution; thresholds are multiples of ``1 / bins``.
    """

    thresholds: tuple[float, ...]
    dice: tuple[float, ...]
    best_threshold: float
    best_dice: float
    n_images: int
    bins: int = DEFAULT_BINS
    criterion: str = CRITERION
    convention: str = CONVENTION
    empty_rule: str = EMPTY_RULE

    def to_json(self) -> str:
        """Serialise as indented JSON (the content of ``threshold.json``)."""
        data = asdict(self)
        data["thresholds"], data["dice"] = list(self.thresholds), list(self.dice)
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ThresholdResult:
        """Inverse of :meth:`to_json`; raises ``ValueError`` on malformed content."""
        try:
            data = json.loads(text)
            data["thresholds"] = tuple(float(t) for t in data["thresholds"])
            data["dice"] = tuple(float(d) for d in data["dice"])
            return cls(**data)
        except (TypeError, KeyError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a threshold result: {exc}") from exc

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_json` to ``path`` atomically."""
        return write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> ThresholdResult:
        """Read a file written by :meth:`save`; raises RunError naming the file if unusable."""
        path = Path(path)
        try:
            return cls.from_json(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunError(
                f"{path}: threshold file not found; run the threshold sweep first."
            ) from None
        except ValueError as exc:
            raise RunError(f"{path}: unreadable threshold file ({exc}); rerun the sweep.") from exc


def _bin_index(prob: np.ndarray, bins: int) -> np.ndarray:
    """Largest ``k`` with ``k / bins <= prob`` (exact in float64, so ``>=`` is respected)."""
    p = prob.astype(np.float64, copy=False)
    idx = np.floor(p * bins).astype(np.int64)
    # p * bins can round across an integer; fix those rare pixels against the exact grid value.
    idx -= (idx / bins) > p
    idx += ((idx + 1) / bins) <= p
    return np.clip(idx, 0, bins)


class ThresholdAccumulator:
    """Collects per-image histograms one image at a time, then sweeps thresholds.

    Example:
        >>> acc = ThresholdAccumulator()
        >>> acc.add(np.array([0.2, 0.7]), np.array([0, 1]))
        >>> acc.counts([0.5]).tolist()  # (images, thresholds, [tp, fp, fn, tn])
        [[[1, 0, 0, 1]]]
    """

    def __init__(self, bins: int = DEFAULT_BINS) -> None:
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}.")
        self.bins = int(bins)
        self._fg_at_least: list[np.ndarray] = []
        self._bg_at_least: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self._fg_at_least)

    def add(self, prob: np.ndarray, mask: np.ndarray) -> None:
        """Add one image: foreground probabilities in [0, 1] and its binary ground truth."""
        prob, mask = np.asarray(prob), np.asarray(mask)
        if prob.shape != mask.shape:
            raise ValueError(f"prob shape {prob.shape} differs from mask shape {mask.shape}.")
        lo, hi = (float(prob.min()), float(prob.max())) if prob.size else (0.0, 1.0)
        if not (np.isfinite(lo) and np.isfinite(hi) and lo >= -_SLACK and hi <= 1 + _SLACK):
            raise ValueError("prob must hold probabilities in [0, 1]; apply a sigmoid to logits.")
        if mask.dtype != bool:
            if np.any((mask != 0) & (mask != 1)):
                raise ValueError("mask must be boolean or contain only 0 and 1.")
            mask = mask.astype(bool)
        fg_hist = np.zeros(self.bins + 1, dtype=np.int64)
        bg_hist = np.zeros(self.bins + 1, dtype=np.int64)
        flat_prob, flat_mask = prob.reshape(-1), mask.reshape(-1)
        # Chunks bound the temporaries for very large images.
        for s in range(0, flat_prob.size, _CHUNK):
            idx = _bin_index(flat_prob[s : s + _CHUNK], self.bins)
            fg = flat_mask[s : s + _CHUNK]
            fg_hist += np.bincount(idx[fg], minlength=self.bins + 1)
            bg_hist += np.bincount(idx[~fg], minlength=self.bins + 1)
        # Entry k of a reversed cumulative sum: pixels with prob >= k / bins.
        self._fg_at_least.append(np.cumsum(fg_hist[::-1])[::-1])
        self._bg_at_least.append(np.cumsum(bg_hist[::-1])[::-1])

    def grid_index(self, thresholds: Sequence[float] | np.ndarray) -> np.ndarray:
        """Indices ``k`` of the grid values ``k / bins`` nearest to ``thresholds``."""
        t = np.asarray(thresholds, dtype=np.float64)
        if t.size and (t.min() < 0 or t.max() > 1):
            raise ValueError("thresholds must lie in [0, 1].")
        return np.rint(t * self.bins).astype(np.int64)

    def counts(self, thresholds: Sequence[float] | np.ndarray) -> np.ndarray:
        """Confusion counts per image and threshold, shape ``(images, thresholds, 4)``."""
        if not len(self):
            raise ValueError("no images added; call add() first.")
        k = self.grid_index(thresholds)
        fg, bg = np.stack(self._fg_at_least), np.stack(self._bg_at_least)
        tp, fp = fg[:, k], bg[:, k]
        fn, tn = fg[:, :1] - tp, bg[:, :1] - fp
        return np.stack([tp, fp, fn, tn], axis=-1)

    def mean_dice(self, thresholds: Sequence[float] | np.ndarray) -> np.ndarray:
        """Mean per-image Dice at each threshold."""
        return np.asarray(dice(self.counts(thresholds))).mean(axis=0)

    def _scores(self, ks: Sequence[int]) -> dict[int, float]:
        """Mean per-image Dice keyed by grid index."""
        if not ks:
            return {}
        values = self.mean_dice(np.asarray(ks) / self.bins).tolist()
        return dict(zip(list(ks), values, strict=True))

    def result(
        self, start: float = 0.05, stop: float = 0.95, step: float = 0.05, refine: bool = True
    ) -> ThresholdResult:
        """Sweep ``start..stop`` (inclusive) by ``step``; optionally refine around the best.

        Refinement evaluates ``best - step .. best + step`` (within [0, 1]) at ``step / 5``.
        The best threshold maximises mean per-image Dice; ties go to the one nearest 0.5.
        """
        if not 0 <= start <= stop <= 1:
            raise ValueError(f"need 0 <= start <= stop <= 1, got start={start}, stop={stop}.")
        step_k = round(step * self.bins)
        if step_k < 1:
            raise ValueError(f"step {step} is finer than the histogram resolution 1/{self.bins}.")
        k0, k1 = self.grid_index([start, stop])
        scores = self._scores(range(k0, k1 + 1, step_k))
        if refine:
            best = _pick(scores, self.bins)
            lo, hi = max(best - step_k, 0), min(best + step_k, self.bins)
            fine = range(lo, hi + 1, max(step_k // 5, 1))
            scores.update(self._scores([k for k in fine if k not in scores]))
        best = _pick(scores, self.bins)
        order = sorted(scores)
        return ThresholdResult(
            thresholds=tuple(k / self.bins for k in order),
            dice=tuple(scores[k] for k in order),
            best_threshold=best / self.bins,
            best_dice=scores[best],
            n_images=len(self),
            bins=self.bins,
        )


def _pick(scores: dict[int, float], bins: int) -> int:
    """Grid index with the highest score; ties -> nearest to 0.5, then the lower threshold."""
    top = max(scores.values())
    tied = [k for k, s in scores.items() if s >= top - _TIE]
    return min(tied, key=lambda k: (abs(2 * k - bins), k))


def sweep(
    probs: Iterable[np.ndarray],
    masks: Iterable[np.ndarray],
    start: float = 0.05,
    stop: float = 0.95,
    step: float = 0.05,
    refine: bool = True,
    bins: int = DEFAULT_BINS,
) -> ThresholdResult:
    """Threshold sweep over paired probability maps and binary masks (any sizes).

    Args:
        probs: Foreground probability maps in [0, 1] (a list, a generator or an ``(N, H, W)``
            array).
        masks: Binary ground truths, one per probability map.
        start: First threshold of the coarse grid.
        stop: Last threshold of the coarse grid (inclusive).
        step: Coarse grid step.
        refine: Re-sweep ``best +- step`` at ``step / 5``.
        bins: Histogram resolution.

    Returns:
        The curve and the chosen threshold (see :class:`ThresholdResult`).
    """
    acc = ThresholdAccumulator(bins)
    for prob, mask in zip(probs, masks, strict=True):
        acc.add(prob, mask)
    return acc.result(start, stop, step, refine)
