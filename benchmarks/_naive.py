"""The naive reference of benchmarks/throughput.py, run in a process of its own.

A plain PyTorch script runs with the C library's default ``malloc`` settings; celltune's
training and inference paths change them for the whole process (``celltune.runtime``).
So that the reference stays what a user's own script gets, it runs in a freshly spawned
process that never imports celltune's training or inference code, and the parent asks it for
one measurement at a time (inference passes still alternate with celltune's).

Example:
    with NaiveProcess(threads=2) as naive:
        rate = naive.call(training_rate, "unet", False, torch.device("cpu"), 8, 256, 2, 10)
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from _common import steady_rate, synchronize

from celltune.models import create_model

# The model and tiles of the inference pass being measured, kept between calls.
_inference: dict[str, Any] = {}


def build_model(name: str, tiny: bool, device: torch.device) -> torch.nn.Module:
    """The benchmarked network, identical in both processes (seed 0, one grayscale channel)."""
    torch.manual_seed(0)
    options = {"tiny": True} if tiny else {}
    return create_model(name, in_channels=1, head="binary", **options).to(device)


def training_step(
    model: torch.nn.Module, batch: int, size: int, device: torch.device
) -> Callable[[], None]:
    """One step of a textbook loop: fp32, default layout, Adam, BCE, one in-memory batch."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(batch, 1, size, size, device=device)
    y = (torch.rand_like(x) > 0.7).float()

    def step() -> None:
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(model(x), y).backward()
        opt.step()
        synchronize(device)

    return step


def training_rate(
    name: str, tiny: bool, device: torch.device, batch: int, size: int, warmup: int, steps: int
) -> float:
    """Images/s of :func:`training_step` after ``warmup`` untimed steps."""
    step = training_step(build_model(name, tiny, device), batch, size, device)
    stamps = []
    for _ in range(warmup + steps):
        step()
        stamps.append(time.perf_counter())
    return steady_rate(stamps, warmup, batch)


def prepare_inference(
    name: str, tiny: bool, device: torch.device, tiles: np.ndarray, batch: int
) -> None:
    """Build the model and hold the pre-cut ``(n, 1, s, s)`` tiles for :func:`inference_pass`."""
    _inference.clear()
    _inference.update(
        model=build_model(name, tiny, device).eval(),
        tiles=torch.from_numpy(tiles).to(device),
        batch=batch,
        device=device,
    )


def inference_pass() -> float:
    """Seconds for ``model(x)`` under ``no_grad`` over every prepared tile, batch by batch."""
    model, tiles, batch = _inference["model"], _inference["tiles"], _inference["batch"]
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(tiles), batch):
            model(tiles[i : i + batch])
    synchronize(_inference["device"])
    return time.perf_counter() - start


def _init(threads: int) -> None:
    torch.set_num_threads(threads)


class NaiveProcess:
    """One spawned worker process running the functions above, with the parent's thread count."""

    def __init__(self, threads: int) -> None:
        self._pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init,
            initargs=(threads,),
        )

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` in the worker and wait for its result."""
        return self._pool.submit(fn, *args).result()

    def __enter__(self) -> NaiveProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown()
