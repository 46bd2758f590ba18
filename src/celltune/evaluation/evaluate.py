"""Choose a run's threshold on validation and evaluate it on a split.

``choose_threshold`` writes ``RUN/threshold.json``, ``choose_postprocess`` the instance step
(``RUN/postprocess.json``), ``tune_run`` both; ``evaluate_run`` writes
``RUN/eval/<split>/per_image.csv``, ``summary.json`` and ``masks/<name>.png``.
A bad image in the split is reported in the summary and skipped; the rest go on.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress

from celltune.config import RunConfig
from celltune.data.neurips import make_splits
from celltune.data.samples import Sample, Splits
from celltune.errors import CelltuneError, DataError
from celltune.evaluation.metrics import (
    EMPTY_RULE,
    confusion,
    dice,
    instance_scores,
    iou,
    pooled_dice,
    pooled_iou,
)
from celltune.evaluation.postprocess import (
    FILTERS,
    PostprocessResult,
    PostprocessSweep,
    cell_areas,
    default_params,
    grids,
    median_cell_area,
)
from celltune.evaluation.stats import bootstrap_ci
from celltune.evaluation.threshold import ThresholdAccumulator, ThresholdResult
from celltune.inference.predict import SEEDED_HEADS, Prediction, Predictor
from celltune.io import read_image, read_label, to_binary
from celltune.rundir import RunDir

PER_IMAGE_COLUMNS = (
    "name", "dice", "iou", "tp", "fp", "fn", "tn", "cells_true", "cells_pred",
    "f1_iou50", "precision_iou50", "recall_iou50", "f1_mean_50_90", "count_error",
)
#: Per-image scores summarised with a mean and a bootstrap interval.
SUMMARY_KEYS = ("dice", "iou", "f1_iou50", "precision_iou50", "recall_iou50", "f1_mean_50_90")
#: Most bytes of validation probabilities kept between the threshold and instance sweeps.
KEEP_BYTES = 512 * 2**20


def _progress(items: list[Any], description: str, enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield from items
        return
    with Progress(transient=True) as bar:
        task = bar.add_task(description, total=len(items))
        for item in items:
            yield item
            bar.advance(task)


def _run(run: str | os.PathLike | RunDir) -> RunDir:
    return run if isinstance(run, RunDir) else RunDir(run)


def run_splits(
    run: str | os.PathLike | RunDir,
    data_root: str | os.PathLike | None = None,
    config: RunConfig | None = None,
) -> Splits:
    """The run's saved splits, or splits rebuilt on another data root with the run's rules."""
    run = _run(run)
    if data_root is None:
        return run.read_splits()
    cfg = config or run.read_config()
    data = cfg.data.model_copy(update={"root": Path(data_root)})
    return make_splits(data, seed=cfg.train.seed)


class KeptProbabilities:
    """Validation probabilities kept from the threshold sweep for the instance sweep.

    The instance sweep of a mask head needs only the probability it thresholds, which the
    threshold sweep has just computed with the same network; keeping it saves predicting
    the validation images a second time. Kept while all of them fit in ``limit`` bytes
    (float32, one plane per image); past that nothing is kept and the sweep predicts again.
    """

    def __init__(self, limit: int = KEEP_BYTES) -> None:
        self.limit = limit
        self.complete = True
        self._probs: dict[str, np.ndarray] = {}
        self._bytes = 0

    def keep(self, sample: Sample, prob: np.ndarray) -> None:
        """Keep ``sample``'s probability; past the limit, drop everything kept so far."""
        if not self.complete:
            return
        if self._bytes + prob.nbytes > self.limit:
            self._probs.clear()
            self._bytes, self.complete = 0, False
            return
        self._probs[str(sample.image)] = prob
        self._bytes += prob.nbytes

    def get(self, sample: Sample) -> np.ndarray | None:
        """The sample's kept probability, or None."""
        return self._probs.get(str(sample.image)) if self.complete else None

    def __len__(self) -> int:
        return len(self._probs)


def _predictions(
    predict: Callable[[np.ndarray], Any], samples: list[Sample], description: str,
    progress: bool, failures: list[dict[str, str]],
    reused: Callable[[Sample], Any] | None = None,
) -> Iterator[tuple[Sample, Any, np.ndarray]]:
    """Yield (sample, ``predict(image)``, true instance labels); unreadable samples go to
    ``failures``. ``reused(sample)``, when given and not None, replaces the prediction."""
    for sample in _progress(samples, description, progress):
        try:
            if sample.label is None:
                raise DataError(f"{sample.image}: has no label file.")
            image = read_image(sample.image)
            labels = read_label(sample.label, shape=image.shape[:2])
            predicted = reused(sample) if reused is not None else None
            if predicted is None:
                predicted = predict(image)
        except CelltuneError as exc:
            failures.append({"name": sample.name, "error": str(exc)})
            continue
        yield sample, predicted, labels


def choose_threshold(
    run: str | os.PathLike | RunDir,
    *,
    predictor: Predictor | None = None,
    config: RunConfig | None = None,
    progress: bool = True,
    keep: KeptProbabilities | None = None,
) -> ThresholdResult:
    """Sweep thresholds on the run's validation split and write ``threshold.json``.

    Binary, boundary and distance heads get the threshold (on the foreground probability, for
    the boundary head ``1 - P(background)``) with the best mean per-image Dice. Two-class heads use
    argmax, equivalent to 0.5; their curve is still recorded for the figures. ``predictor``
    and ``config`` are the run's own when the caller has already loaded them; ``keep``
    collects the validation probabilities for :func:`choose_postprocess`.
    """
    run = _run(run)
    cfg = config or run.read_config()
    predictor = predictor or Predictor.from_run(run, config=cfg)
    acc = ThresholdAccumulator()
    failures: list[dict[str, str]] = []
    val = run.read_splits().val
    sweep = _predictions(predictor.predict_proba, val, "threshold sweep", progress, failures)
    for sample, prob, labels in sweep:
        acc.add(prob, to_binary(labels))
        if keep is not None:
            keep.keep(sample, prob)
    if not len(acc):
        raise DataError(f"{run.path}: no readable validation images to choose a threshold on.")
    t = cfg.threshold
    result = acc.result(t.start, t.stop, t.step, t.refine)
    if cfg.model.head == "two_class":
        at_half = float(acc.mean_dice([0.5])[0])
        result = replace(result, best_threshold=0.5, best_dice=at_half,
                         criterion="argmax of the two-class softmax (equivalent to 0.5)")
    run.write_threshold(result)
    return result


def choose_postprocess(
    run: str | os.PathLike | RunDir,
    *,
    predictor: Predictor | None = None,
    config: RunConfig | None = None,
    progress: bool = True,
    kept: KeptProbabilities | None = None,
) -> PostprocessResult:
    """Sweep the instance step's parameters on validation and write ``postprocess.json``.

    The predictor's threshold stays the mask threshold (call this after
    :func:`choose_threshold`); the decoding parameter (``h`` or the seed threshold) and the
    smallest cell kept are chosen by F1 at IoU 0.5 over all validation cells
    (:mod:`celltune.evaluation.postprocess`).
    ``kept``: the probabilities :func:`choose_threshold` kept with this predictor's network
    and options; a mask head's sweep thresholds them instead of predicting again (the
    instance heads' decoding needs every channel, so they predict).
    """
    run = _run(run)
    cfg = config or run.read_config()
    predictor = predictor or Predictor.from_run(run, config=cfg)
    val = run.read_splits().val
    seeded = predictor.head in SEEDED_HEADS
    area = _median_area(val)
    sweep = PostprocessSweep(grids(seeded, area), FILTERS, default_params(seeded))
    failures: list[dict[str, str]] = []
    reuse = None
    if kept is not None and not seeded:
        def reuse(sample: Sample) -> Prediction | None:
            prob = kept.get(sample)
            if prob is None:
                return None
            return Prediction(prob, prob >= predictor.threshold, predictor.threshold)
    for _, predicted, labels in _predictions(predictor.predict, val, "instance sweep",
                                             progress, failures, reused=reuse):
        sweep.add(labels, _decoder(predictor, predicted))
    if not len(sweep):
        raise DataError(f"{run.path}: no readable validation images to tune the instances on.")
    result = sweep.result(
        head=predictor.head, parameter="seed_threshold" if seeded else "h",
        median_cell_area=area, threshold=predictor.threshold,
    )
    run.write_postprocess(result)
    return result


def tune_run(
    run: str | os.PathLike | RunDir,
    *,
    predictor: Predictor | None = None,
    config: RunConfig | None = None,
    progress: bool = True,
) -> tuple[ThresholdResult, PostprocessResult, Predictor]:
    """Choose the threshold, then the instance step, on the run's validation split.

    Writes ``threshold.json`` and ``postprocess.json`` (replacing earlier choices: after a
    celltune update widened a grid, this re-tunes an old run) and returns both results and
    the predictor set to them. The validation images are predicted once for both sweeps
    while their probabilities fit :data:`KEEP_BYTES`.
    """
    run = _run(run)
    cfg = config or run.read_config()
    # Loaded without the saved choices: they are what is chosen again (and may be damaged).
    predictor = predictor or Predictor.from_run(run, config=cfg, threshold=0.5, instances={})
    kept = KeptProbabilities()
    threshold = choose_threshold(run, predictor=predictor, config=cfg, progress=progress,
                                 keep=kept)
    predictor = predictor.with_options(threshold=threshold.best_threshold)
    instances = choose_postprocess(run, predictor=predictor, config=cfg, progress=progress,
                                   kept=kept)
    return threshold, instances, predictor.with_options(instances=instances.best)


def _median_area(samples: list[Sample]) -> float:
    """Median cell area of the samples' label maps (unreadable ones are left out here and
    reported by the sweep)."""
    areas = []
    for sample in samples:
        try:
            if sample.label is not None:
                areas.append(cell_areas(read_label(sample.label)))
        except CelltuneError:
            continue
    return median_cell_area(areas)


def _decoder(predictor: Predictor, predicted: Prediction) -> Callable[[dict[str, Any]], np.ndarray]:
    """Cells of one prediction for given decoding parameters, every size kept."""
    def decode(params: dict[str, Any]) -> np.ndarray:
        options = predictor.with_options(instances={**params, "min_size": 0, "min_fraction": 0.0})
        return options.label(predicted.mask, predicted.classes)

    return decode


def evaluate_run(
    run: str | os.PathLike | RunDir,
    *,
    split: str = "test",
    data_root: str | os.PathLike | None = None,
    instance_method: str | None = None,
    bootstrap: int | None = None,
    progress: bool = True,
    save_masks: bool = True,
    predictor: Predictor | None = None,
    config: RunConfig | None = None,
) -> dict[str, Any]:
    """Evaluate a trained run on ``split``; returns the summary (also written to disk).

    Instance scores use :meth:`Predictor.label` with the run's tuned instance parameters
    (``postprocess.json``); ``instance_method`` (``"watershed"`` or ``"components"``)
    overrides its method. ``"watershed"`` is an instance head's own decoding (interior or
    distance-peak seeds grown over the mask) for boundary and distance runs and the mask's
    distance-transform watershed for the other heads.

    ``predictor`` (with the run's chosen threshold) and ``config`` are the run's own when the
    caller has already loaded them.
    """
    run = _run(run)
    cfg = config or run.read_config()
    samples = run_splits(run, data_root, cfg)[split]
    if not samples:
        raise DataError(f"{run.path}: the {split} split has no images.")
    predictor = predictor or Predictor.from_run(run, config=cfg)
    if instance_method is not None:
        predictor = predictor.with_options(instances={"method": instance_method})
    failures: list[dict[str, str]] = []
    rows = [
        _score_image(run, split, sample, predicted, labels, predictor, save_masks)
        for sample, predicted, labels in _predictions(predictor.predict, samples,
                                                      f"evaluate {split}", progress, failures)
    ]
    if not rows:
        raise DataError(
            f"{run.path}: no readable images in the {split} split; see the errors above."
        )
    n_boot = cfg.eval.bootstrap if bootstrap is None else bootstrap
    summary = summarize_rows(rows, n_boot=n_boot, seed=cfg.train.seed)
    summary.update({
        "split": split, "threshold": predictor.threshold, "head": cfg.model.head,
        "model": cfg.model.name, "instance_method": predictor.instance_method,
        "instances": predictor.instance_params(),
        "data_root": str(data_root or cfg.data.root), "failures": failures,
    })
    run.write_per_image(split, rows, PER_IMAGE_COLUMNS)
    run.write_summary(split, summary)
    return summary


def _score_image(
    run: RunDir, split: str, sample: Sample, predicted: Prediction, labels: np.ndarray,
    predictor: Predictor, save_mask: bool,
) -> dict[str, Any]:
    """One image's row of ``per_image.csv``; its mask is saved on the way.

    Cells come from :meth:`Predictor.label` with the predictor's instance parameters.
    """
    mask = predicted.mask
    counts = confusion(mask, to_binary(labels))
    # F1 at IoU 0.5, 0.55, ..., 0.9; the first entry is the challenge's F1.
    cells = predictor.label(mask, predicted.classes)
    inst = instance_scores(labels, cells)
    if save_mask:
        run.write_mask(split, sample.name, mask)
    return {
        "name": sample.name, "dice": dice(counts), "iou": iou(counts), **counts._asdict(),
        "cells_true": inst["n_gt"], "cells_pred": inst["n_pred"],
        "f1_iou50": inst["f1"][0], "precision_iou50": inst["precision"][0],
        "recall_iou50": inst["recall"][0], "f1_mean_50_90": inst["mean_f1"],
        "count_error": inst["n_pred"] - inst["n_gt"],
    }


def summarize_rows(rows: list[dict[str, Any]], n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Means, pooled scores and bootstrap 95% confidence intervals of per-image rows."""
    counts = np.array([[r["tp"], r["fp"], r["fn"], r["tn"]] for r in rows], dtype=np.int64)
    summary: dict[str, Any] = {"n_images": len(rows), "empty_rule": EMPTY_RULE}
    for key in SUMMARY_KEYS:
        if key not in rows[0]:
            continue
        values = np.array([r[key] for r in rows], dtype=np.float64)
        summary[key] = float(values.mean())
        if n_boot and len(values) > 1:
            low, high = bootstrap_ci(values, n=n_boot, seed=seed)
            summary[f"{key}_ci95"] = [float(low), float(high)]
        else:
            summary[f"{key}_ci95"] = [math.nan, math.nan]
    if "f1_iou50" in rows[0]:
        summary["f1_iou50_median"] = float(np.median([r["f1_iou50"] for r in rows]))
    if "count_error" in rows[0]:
        errors = np.array([r["count_error"] for r in rows], dtype=np.float64)
        true = np.array([r["cells_true"] for r in rows], dtype=np.float64)
        summary["count_error_mean_abs"] = float(np.abs(errors).mean())
        summary["count_error_relative"] = float(np.abs(errors).sum() / max(true.sum(), 1.0))
    summary["dice_pooled"] = float(pooled_dice(counts))
    summary["iou_pooled"] = float(pooled_iou(counts))
    return summary
