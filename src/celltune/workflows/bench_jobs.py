"""What the quality benchmark's pieces hand each other: settings, a training job, its result."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from celltune.data.samples import Sample

#: (mask, instance labels) per variant name, for one raw image.
Segment = Callable[[np.ndarray], dict[str, tuple[np.ndarray, np.ndarray]]]


@dataclass(frozen=True)
class BenchSettings:
    """What the trainings share. ``channels``, ``crop`` and ``batch_size`` are the plain loop's
    and Cellpose's; celltune's recipe decides its own (overridable by ``celltune``).
    ``tiny`` swaps in tiny networks (tests only)."""

    minutes: float = 6.0
    channels: int = 1
    crop: int = 256
    batch_size: int = 8
    tiny: bool = False
    #: Overrides of the celltune recipe's RunConfig, e.g. ``{"eval": {"tile": 256}}``.
    celltune: dict[str, Any] = field(default_factory=dict)
    #: Also score celltune's network with the untuned instance step (``celltune@untuned``),
    #: to measure what the tuning adds (recipe trials).
    untuned_instances: bool = False
    #: Also score celltune's network with test-time flips (``celltune@tta``; its threshold
    #: chosen again on validation with the flips), to measure what they add (recipe trials).
    tta_variant: bool = False
    #: Extra ``cellpose.train.train_seg`` arguments, e.g. ``{"bsize": 64}``.
    cellpose: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Job:
    """One training: everything a recipe may see. The test images are deliberately not here."""

    data_root: Path
    train: list[Sample]
    val: list[Sample]
    seed: int
    settings: BenchSettings
    work: Path


@dataclass
class Trained:
    """A trained recipe: how it segments an image, and what its training cost."""

    segment: Segment
    variants: tuple[str, ...]
    train_seconds: float
    info: dict[str, Any] = field(default_factory=dict)
    #: Large files (checkpoints) removed after scoring unless checkpoints are kept.
    cleanup: list[Path] = field(default_factory=list)


@dataclass
class BenchResult:
    """Everything :func:`render_markdown` prints; ``results.json`` holds :meth:`to_json`."""

    data_root: str
    out_dir: str
    split: dict[str, Any]
    settings: dict[str, Any]
    recipes: list[str]
    seeds: list[int]
    trainings: list[dict[str, Any]]
    summary: dict[str, dict[str, Any]]
    pairs: list[dict[str, Any]]
    machine: dict[str, Any]
    date: str
    command: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
