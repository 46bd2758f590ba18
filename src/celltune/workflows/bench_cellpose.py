"""Cellpose 3 trained from scratch, as a recipe of :mod:`celltune.workflows.bench`.

Needs the optional extra ``bench`` (``cellpose==3.1.1.2``). The network is Cellpose's CPnet
(``CellposeModel(pretrained_model=False)``: random weights, nothing is loaded or downloaded; a
guard makes any download attempt an error) trained by ``cellpose.train.train_seg`` with its own
recipe: its normalisation, random rotate-and-resize crops of 224 pixels rescaled to the
training cells' mean diameter, AdamW at 0.005 with its warm-up and end-of-training
learning-rate decay, batch 8, last weights. Images are given as grayscale (channels
``[0, 0]``), like the semantic recipes' single channel. One change to its defaults:
``min_train_masks=1`` instead of 5, because our label maps are complete and a few images hold
fewer than five cells; any ``train_seg`` argument can be overridden through
``BenchSettings.cellpose``.

How the wall-clock budget bounds it: ``train_seg`` needs ``n_epochs`` up front, and its
learning-rate schedule depends on it (a linear warm-up over 10 epochs; from 101 epochs on, a
decay over the last 50 or 100). Before the timed run, a throw-away network trains three
batches to time one batch. The budget, less the measured set-up time, then buys a number of
batches, spent as full passes over the training images when more than 100 of them fit, and
otherwise as shorter epochs of whole batches (Cellpose's own ``nimg_per_epoch``), so that the
warm-up is not the whole run and the schedule ends with its decay where possible (see
:func:`plan_epochs`). A guard on the network's forward pass stops training when the budget is
spent anyway (batches slower than measured), keeping the weights reached so far; the overrun
is at most one batch. The flows of the training labels (Cellpose's targets, a fixed function
of the labels) and the timing are computed once per training set, outside the budget, as the
other recipes read and normalise their images outside theirs. Seeds set the initial weights
(``torch.manual_seed``); ``train_seg`` draws its crops with ``np.random.seed(epoch)`` itself.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from celltune.io import read_image, read_label, to_channels
from celltune.workflows.bench_jobs import Job, Trained

DEFAULTS: dict[str, Any] = {"min_train_masks": 1}
#: Batches the throw-away network trains to time one batch; the first interval (warm-up:
#: allocations, first kernels) is left out. With 3 batches and the mean of the intervals, the
#: first benchmark (2026-12-01) measured 14.4 s per batch where training then ran at 8-9 s,
#: and Cellpose used only about 55% of its budget.
CALIBRATION_BATCHES = 5
#: Share of the remaining budget planned for epochs (batches vary a little in cost).
_PLAN_SHARE = 0.95
#: train_seg decays its learning rate at the end only when it runs more than 100 epochs.
FULL_SCHEDULE_EPOCHS = 101
#: Flows and batch timing of the latest training set: the same for every seed.
_cache: dict[tuple[str, ...], dict[str, Any]] = {}


class _OutOfTime(Exception):
    pass


def available() -> bool:
    """True when ``cellpose`` can be imported (the optional extra ``bench``)."""
    try:
        import cellpose.models
        import cellpose.train  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def no_downloads() -> Iterator[None]:
    """Make Cellpose's model download function raise instead of reaching the network."""
    from cellpose import utils

    def refuse(url: str, *_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError(f"celltune bench: Cellpose tried to download {url}; refused.")

    original = utils.download_url_to_file
    utils.download_url_to_file = refuse
    try:
        yield
    finally:
        utils.download_url_to_file = original


def _gray(image: np.ndarray) -> np.ndarray:
    return to_channels(image, 1)[..., 0]


def _prepare(key: tuple[str, ...], images: list, labels: list, work: Path,
             options: dict[str, Any]) -> dict[str, Any]:
    """Flows (Cellpose's training targets) and batch timing, once per training set."""
    import torch
    from cellpose import dynamics

    if key not in _cache:
        _cache.clear()
        flows = dynamics.labels_to_flows([lab.copy() for lab in labels],
                                         device=torch.device("cpu"))
        _cache[key] = {"flows": flows, "timing": calibrate(images, flows, work, options)}
    return _cache[key]


def _new_model(seed: int) -> Any:
    import torch
    from cellpose import models

    torch.manual_seed(seed)
    return models.CellposeModel(gpu=False, pretrained_model=False, model_type=None)


def _train(net: Any, images: list, flows: list, n_epochs: int, work: Path, name: str,
           options: dict[str, Any]) -> None:
    from cellpose import train

    work.mkdir(parents=True, exist_ok=True)
    train.train_seg(net, train_data=images, train_labels=flows, channels=[0, 0],
                    n_epochs=n_epochs, save_path=str(work), model_name=name, **options)


def calibrate(images: list, flows: list, work: Path, options: dict[str, Any]) -> dict[str, float]:
    """Seconds of ``train_seg``'s set-up and of one training batch, on a throw-away network."""
    model = _new_model(0)
    stamps: list[float] = []
    hook = model.net.register_forward_pre_hook(
        lambda module, _args: stamps.append(time.monotonic()) if module.training else None
    )
    batch = int(options.get("batch_size", 8))
    calib = {**options, "nimg_per_epoch": CALIBRATION_BATCHES * batch}
    started = time.monotonic()
    try:
        _train(model.net, images, flows, 1, work, "calibration", calib)
    finally:
        hook.remove()
    ended = time.monotonic()
    if not stamps:
        raise RuntimeError("Cellpose calibration ran no training step; no training images?")
    intervals = np.diff(stamps)
    steady = intervals[1:] if intervals.size > 1 else intervals
    per_batch = float(np.median(steady)) if steady.size else ended - stamps[0]
    return {"setup": stamps[0] - started, "batch": per_batch, "seconds": ended - started}


def plan_epochs(budget: float, setup: float, batch_seconds: float, n_images: int,
                batch_size: int, nimg_per_epoch: int | None = None) -> tuple[int, int | None]:
    """``(n_epochs, nimg_per_epoch)`` whose whole schedule fits in ``budget`` seconds.

    Full passes over the training images (``train_seg``'s default epoch) when more than 100
    of them fit, since from 101 epochs on ``train_seg`` ends with its learning-rate decay;
    otherwise shorter epochs of whole batches, as many as fit (up to 101), so the schedule
    still warms up over 10 of them and, where possible, decays at the end. A caller's own
    ``nimg_per_epoch`` is kept. At least one epoch.
    """
    batches = max(1, int(_PLAN_SHARE * (budget - setup) / max(batch_seconds, 1e-9)))
    full = math.ceil(n_images / batch_size)
    if nimg_per_epoch is not None:
        per_epoch = math.ceil(nimg_per_epoch / batch_size)
        return max(1, batches // per_epoch), nimg_per_epoch
    if batches >= FULL_SCHEDULE_EPOCHS * full:
        return batches // full, None
    per_epoch = max(1, batches // FULL_SCHEDULE_EPOCHS)
    return max(1, batches // per_epoch), per_epoch * batch_size


def _guard(net: Any, deadline: float) -> Any:
    """Stop training (after at least one step) once ``deadline`` has passed."""
    steps = [0]

    def check(module: Any, _args: Any) -> None:
        if not module.training:
            return
        if steps[0] and time.monotonic() > deadline:
            raise _OutOfTime
        steps[0] += 1

    return net.register_forward_pre_hook(check)


def train_cellpose(job: Job) -> Trained:
    """Train Cellpose on ``job.train`` within ``job.settings.minutes``; see the module doc."""
    options = {**DEFAULTS, **job.settings.cellpose}
    images = [_gray(read_image(s.image)) for s in job.train]
    labels = [read_label(s.label, shape=im.shape[:2]) for s, im in zip(job.train, images,
                                                                       strict=True)]
    kept = sum(len(np.unique(lab)) - 1 >= options["min_train_masks"] for lab in labels)
    key = (*(str(s.label) for s in job.train), json.dumps(options, sort_keys=True))
    started = time.monotonic()
    with no_downloads():
        prepared = _prepare(key, images, labels, job.work / "calibration", options)
        flows, timing = prepared["flows"], prepared["timing"]
        prep = time.monotonic() - started
        budget = job.settings.minutes * 60
        n_epochs, per_epoch = plan_epochs(budget, timing["setup"], timing["batch"], max(kept, 1),
                                          int(options.get("batch_size", 8)),
                                          options.get("nimg_per_epoch"))
        model = _new_model(job.seed)
        begun = time.monotonic()
        hook, stopped = _guard(model.net, begun + budget), False
        try:
            _train(model.net, images, flows, n_epochs, job.work, f"cellpose_seed{job.seed}",
                   {**options, "nimg_per_epoch": per_epoch})
        except _OutOfTime:
            stopped = True
        finally:
            hook.remove()
        seconds = time.monotonic() - begun
    model.diam_labels = float(model.net.diam_labels.item())
    model.net.eval()

    def segment(image: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        with no_downloads():
            masks = model.eval(_gray(image), channels=[0, 0], diameter=None)[0]
        masks = np.asarray(masks, dtype=np.int32)
        return {"cellpose": (masks > 0, masks)}

    info = {"n_epochs": n_epochs, "nimg_per_epoch": per_epoch, "stopped_by_budget": stopped, "train_images": kept,
            "prep_seconds": prep, "calibration": timing, "diam_labels": model.diam_labels}
    return Trained(segment=segment, variants=("cellpose",), train_seconds=seconds, info=info,
                   cleanup=[job.work / "models", job.work / "calibration"])
