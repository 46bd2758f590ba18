"""Quality benchmark: celltune's default recipe against the tools a user would use instead.

On one dataset folder, every recipe is trained with the same wall-clock budget, on the same
machine, on the same fixed train/validation/test split, once per seed, and scored on the same test
images with the same metric code:

- ``celltune``: celltune's default recipe (``RunConfig`` defaults, every image format kept,
  ``train.max_time`` = the budget); checkpoint and threshold chosen on validation.
- ``plain_smp``: the training loop a user would write with segmentation_models.pytorch (see
  :func:`train_plain`), scored at threshold 0.5 (``plain_smp@0.5``) and at the threshold with
  the best validation Dice (``plain_smp@val``).
- ``cellpose``: Cellpose 3 trained from scratch with its own recipe (optional extra ``bench``;
  see :mod:`celltune.workflows.bench_cellpose`).

No test image reaches a choice: a recipe's trainer gets a :class:`Job`, which holds only the
training and validation images; the test images are read afterwards by :func:`score_test`.

Per image: Dice and IoU of the foreground, and the challenge's instance F1 at IoU 0.5 (cells of
the semantic recipes come from celltune's watershed instance step; Cellpose gives its own).
Per recipe: the mean over seeds of the test means, and their spread (min-max, std) over seeds.
Per pair of recipes: the mean per-image difference with a 95% bootstrap interval over images
and seeds (:func:`celltune.evaluation.stats.seed_image_interval`), the signed-rank p-value of
the seed-averaged per-image differences, Holm-adjusted over every comparison of the table, and
a verdict that needs the interval, the adjusted p-value and the rank direction to agree.

Example:
    >>> result = run_benchmark("data/glioma_he", "bench/glioma_he", minutes=6)  # doctest: +SKIP
    >>> print(render_markdown(result))                                          # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from datetime import date
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import segmentation_models_pytorch as smp
import torch

from celltune.config import RunConfig, ThresholdConfig, deep_merge
from celltune.data.samples import Sample, Splits
from celltune.errors import ConfigError
from celltune.evaluation.metrics import confusion, dice, instance_scores, iou
from celltune.evaluation.postprocess import default_params
from celltune.evaluation.threshold import ThresholdAccumulator
from celltune.inference.predict import SEEDED_HEADS, Predictor
from celltune.io import normalize, read_image, read_label, to_channels, write_text
from celltune.rundir import BenchDir
from celltune.workflows import bench_cellpose
from celltune.workflows.bench_jobs import BenchResult, BenchSettings, Job, Segment, Trained
from celltune.workflows.bench_report import METRICS, compare, render_markdown, summarize
from celltune.workflows.bench_split import make_split, prepare_split
from celltune.workflows.run import run_pipeline

__all__ = [
    "BenchResult", "BenchSettings", "Job", "Trained", "compare", "make_split", "prepare_split",
    "render_markdown", "run_benchmark", "run_training", "score_test", "summarize",
]

DEFAULT_RECIPES = ("celltune", "plain_smp", "cellpose")
DEFAULT_SEEDS = (0, 1, 2)


# --- recipes ---------------------------------------------------------------------------------
def _semantic(predictors: dict[str, Predictor]) -> Segment:
    """Probabilities once per image and flip setting; a mask and cells per variant.

    All the variants' predictors share one network and differ only in their threshold,
    instance step and test-time flips; cells come from each one's :meth:`Predictor.label`
    (the mask's watershed, or an instance-aware head's own decoding).
    """

    def segment(image: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        preds: dict[bool, Any] = {}  # one forward pass per test-time-flip setting
        out = {}
        for variant, predictor in predictors.items():
            if predictor.tta not in preds:
                preds[predictor.tta] = predictor.predict(image)
            pred = preds[predictor.tta]
            mask = pred.probability >= predictor.threshold
            out[variant] = (mask, predictor.label(mask, pred.classes))
        return out

    return segment


def train_celltune(job: Job) -> Trained:
    """celltune's default recipe as a user runs it; the run folder is ``job.work`` (test split
    left empty)."""
    s = job.settings
    # What a user types: the folder, the split, the budget, a seed. Channels, crop, batch
    # size and the rest are celltune's own defaults and derivations, not the shared settings
    # the hand-written loop uses.
    config = {
        "name": f"celltune-seed{job.seed}",
        "data": {"root": str(job.data_root)},
        "model": {"options": {"tiny": True}} if s.tiny else {},
        "train": {"max_time": s.minutes, "seed": job.seed},
        "eval": {"bootstrap": 0},
    }
    cfg = RunConfig.model_validate(deep_merge(config, s.celltune))
    splits = Splits(train=list(job.train), val=list(job.val), test=[])
    result = run_pipeline(cfg, job.work, overwrite=True, progress=False, evaluate_split=None,
                          splits=splits)
    predictor = Predictor.from_run(result.run_dir)
    predictors = {"celltune": predictor}
    if s.untuned_instances:
        predictors["celltune@untuned"] = predictor.with_options(
            instances=default_params(predictor.head in SEEDED_HEADS))
    if s.tta_variant:
        flipped = predictor.with_options(tta=True)
        predictors["celltune@tta"] = flipped.with_options(
            threshold=val_threshold(flipped, job.val))
    return Trained(
        segment=_semantic(predictors),
        variants=tuple(predictors),
        train_seconds=result.train_seconds,
        info={"threshold": result.threshold},
        cleanup=[Path(result.run_dir) / "checkpoints"],
    )


def _load(sample: Sample, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Percentile-normalised ``(H, W, C)`` image (as celltune does) and its foreground."""
    image = read_image(sample.image)
    labels = read_label(sample.label, shape=image.shape[:2])
    return normalize(to_channels(image, channels)), labels > 0


def _plain_batch(data: list, rng: np.random.Generator, batch: int, crop: int) -> tuple:
    """Random ``crop`` squares (zero-padded if the image is smaller) with random flips."""
    xs, ys = [], []
    for _ in range(batch):
        image, mask = data[rng.integers(len(data))]
        ph, pw = max(0, crop - image.shape[0]), max(0, crop - image.shape[1])
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
        mask = np.pad(mask, ((0, ph), (0, pw)))
        y0 = rng.integers(0, image.shape[0] - crop + 1)
        x0 = rng.integers(0, image.shape[1] - crop + 1)
        x, y = image[y0 : y0 + crop, x0 : x0 + crop], mask[y0 : y0 + crop, x0 : x0 + crop]
        if rng.random() < 0.5:
            x, y = x[:, ::-1], y[:, ::-1]
        if rng.random() < 0.5:
            x, y = x[::-1], y[::-1]
        xs.append(np.moveaxis(x, -1, 0).copy())
        ys.append(y[None].astype(np.float32))
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def _plain_model(settings: BenchSettings) -> Any:
    if settings.tiny:
        return smp.Unet("tu-test_resnet", encoder_weights=None, in_channels=settings.channels,
                        classes=1, decoder_channels=(32, 16, 16, 8, 8))
    return smp.Unet("resnet34", encoder_weights=None, in_channels=settings.channels, classes=1)


def val_threshold(predictor: Any, val: Sequence[Sample]) -> float:
    """The threshold with the best mean validation Dice, swept as celltune sweeps it."""
    acc = ThresholdAccumulator()
    for sample in val:
        image = read_image(sample.image)
        labels = read_label(sample.label, shape=image.shape[:2])
        acc.add(predictor.predict_proba(image), labels > 0)
    t = ThresholdConfig()
    return acc.result(t.start, t.stop, t.step, t.refine).best_threshold


def train_plain(job: Job) -> Trained:
    """A plain loop: SMP U-Net (ResNet34, random init), random crops and flips, celltune's
    percentile normalisation, Adam 1e-3, BCE + Dice, until the budget ends; last weights."""
    s = job.settings
    torch.manual_seed(job.seed)
    rng = np.random.default_rng(job.seed)
    model = _plain_model(s)
    data = [_load(sample, s.channels) for sample in job.train]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    bce, dice_loss = torch.nn.BCEWithLogitsLoss(), smp.losses.DiceLoss("binary")
    model.train()
    started, steps = time.monotonic(), 0
    while steps == 0 or time.monotonic() - started < s.minutes * 60:
        x, y = _plain_batch(data, rng, s.batch_size, s.crop)
        logits = model(x)
        loss = bce(logits, y) + dice_loss(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
    seconds = time.monotonic() - started
    predictor = Predictor(model.eval(), channels=s.channels, threshold=0.5)
    threshold = val_threshold(predictor, job.val)
    return Trained(
        segment=_semantic({"plain_smp@0.5": predictor,
                           "plain_smp@val": predictor.with_options(threshold=threshold)}),
        variants=("plain_smp@0.5", "plain_smp@val"),
        train_seconds=seconds,
        info={"steps": steps, "val_threshold": threshold},
    )


TRAINERS: dict[str, Callable[[Job], Trained]] = {
    "celltune": train_celltune,
    "plain_smp": train_plain,
    "cellpose": bench_cellpose.train_cellpose,
}


# --- scoring ---------------------------------------------------------------------------------
def score_test(segment: Segment, test: Sequence[Sample]) -> dict[str, list[dict[str, Any]]]:
    """Per-image Dice, IoU and instance F1@0.5 of every variant on the test images."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for sample in test:
        image = read_image(sample.image)
        labels = read_label(sample.label, shape=image.shape[:2])
        for variant, (mask, cells) in segment(image).items():
            counts = confusion(mask, labels > 0)
            f1 = instance_scores(labels, cells, iou_thresholds=(0.5,))["f1"][0]
            rows.setdefault(variant, []).append(
                {"name": sample.name, "dice": dice(counts), "iou": iou(counts), "f1": float(f1)}
            )
    return rows


def _fingerprint(settings: BenchSettings, splits: Splits) -> dict[str, Any]:
    return {"settings": asdict(settings),
            "split": {k: [s.name for s in splits[k]] for k in ("train", "val", "test")}}


def run_training(recipe: str, seed: int, splits: Splits, data_root: Path, out_dir: Path,
                 settings: BenchSettings, keep_checkpoints: bool = False) -> dict[str, Any]:
    """Train one recipe with one seed and score it on the test images (reused when done)."""
    if recipe not in TRAINERS:
        raise ConfigError(f"Unknown recipe {recipe!r}; valid recipes: {', '.join(TRAINERS)}.")
    folder = BenchDir(out_dir)
    work, done = folder.training(recipe, seed), folder.scores(recipe, seed)
    fingerprint = _fingerprint(settings, splits)
    if done.is_file():
        record = json.loads(done.read_text(encoding="utf-8"))
        if record.get("fingerprint") == fingerprint:
            return {**record, "reused": True}
    work.mkdir(parents=True, exist_ok=True)
    job = Job(data_root, list(splits.train), list(splits.val), seed, settings, work)
    started = time.monotonic()
    trained = TRAINERS[recipe](job)
    scoring = time.monotonic()
    scores = score_test(trained.segment, splits.test)
    record = {
        "recipe": recipe, "seed": seed, "variants": list(trained.variants),
        "train_seconds": trained.train_seconds, "score_seconds": time.monotonic() - scoring,
        "wall_seconds": time.monotonic() - started, "info": trained.info,
        "scores": scores, "fingerprint": fingerprint,
    }
    if not keep_checkpoints:
        for path in trained.cleanup:
            shutil.rmtree(path, ignore_errors=True)
    write_text(done, json.dumps(record, indent=1))
    return {**record, "reused": False}


def machine() -> dict[str, Any]:
    info = {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "gpu": torch.cuda.is_available()}
    try:
        info["cellpose"] = version("cellpose")
    except PackageNotFoundError:  # not installed: the optional extra
        info["cellpose"] = None
    return info


def run_benchmark(
    data_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    recipes: Sequence[str] = DEFAULT_RECIPES,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    minutes: float = 6.0,
    split_file: str | os.PathLike | None = None,
    settings: BenchSettings | None = None,
    group_pattern: str | None = None,
    keep_checkpoints: bool = False,
    progress: Callable[[str], None] | None = None,
    command: str | None = None,
) -> BenchResult:
    """Train every recipe with every seed on one dataset, score them, write the results.

    Writes ``out_dir/split.json`` (made once, then reused; or copied from ``split_file``),
    ``runs/<recipe>/seed<k>/scores.json`` (a finished training is reused when the settings and
    split match), ``results.json`` and ``results.md``.
    """
    _check_recipes(recipes)
    settings = replace(settings or BenchSettings(), minutes=minutes)
    say = progress or (lambda _line: None)
    root, out = Path(data_root).expanduser().resolve(), Path(out_dir)
    splits, split_info = prepare_split(root, out, split_file=split_file,
                                       group_pattern=group_pattern)
    names = [s.name for s in splits.test]
    say(f"split: {split_info['counts']} ({split_info['rule']})")
    records, total = [], len(seeds) * len(recipes)
    for seed in seeds:
        for recipe in recipes:
            tag = f"[{len(records) + 1}/{total}] {recipe} seed {seed}"
            say(f"{tag}: training, budget {minutes:g} min")
            record = run_training(recipe, seed, splits, root, out, settings, keep_checkpoints)
            records.append(record)
            say(f"{tag}: {_progress_line(record)}")
    result = BenchResult(
        data_root=str(root), out_dir=str(out), split=split_info, settings=asdict(settings),
        recipes=list(recipes), seeds=list(seeds),
        trainings=[{k: v for k, v in r.items() if k not in ("scores", "fingerprint")}
                   for r in records],
        summary=summarize(records, names), pairs=compare(records, names),
        machine=machine(), date=date.today().isoformat(), command=command,
    )
    folder = BenchDir(out)
    write_text(folder.results_json, json.dumps(result.to_json(), indent=1))
    write_text(folder.results_md, render_markdown(result))
    return result


def _check_recipes(recipes: Sequence[str]) -> None:
    """Fail before any training on an unknown recipe or a missing optional extra."""
    unknown = [r for r in recipes if r not in TRAINERS]
    if not recipes:
        raise ConfigError(f"No recipes given; valid recipes: {', '.join(TRAINERS)}.")
    if unknown:
        raise ConfigError(f"Unknown recipes {unknown}; valid recipes: {', '.join(TRAINERS)}.")
    if "cellpose" in recipes and not bench_cellpose.available():
            raise ConfigError("The cellpose recipe needs the optional extra: "
                              "pip install 'celltune[bench]' (cellpose==3.1.1.2).")


def _progress_line(record: dict[str, Any]) -> str:
    parts = [f"{'reused; ' if record['reused'] else ''}trained {record['train_seconds'] / 60:.2f}"
             f" min, scored {record['score_seconds'] / 60:.2f} min"]
    for variant, rows in record["scores"].items():
        means = {m: np.mean([r[m] for r in rows]) for m in METRICS}
        parts.append(f"{variant} Dice {means['dice']:.3f} IoU {means['iou']:.3f} "
                     f"F1 {means['f1']:.3f}")
    return "; ".join(parts)


