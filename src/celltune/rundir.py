"""The run folder and the study folder: every path in them, and reading and writing their files.

No other module spells a file name of these folders; they ask :class:`RunDir` and
:class:`StudyDir`. A run folder is self-describing (everything needed to reload and
re-evaluate the run)::

    RUN/
      config.yaml            resolved config with provenance and the derived settings' reasons
      fingerprint.json       the training images' fingerprint (when settings were derived)
      splits.json            train / val / test image lists
      checkpoints/best.ckpt, last.ckpt
      metrics.csv            one row per epoch
      threshold.json         the validation sweep and the chosen threshold
      postprocess.json       the instance step's parameters, chosen on validation by F1
      done.json              written last: the run is finished
      eval/<split>/summary.json, per_image.csv, masks/<image>.png
      plots/loss.png, threshold.png, postprocess.png

A study folder holds one run folder per row, ``study.yaml``, ``results.md``,
``results.csv``, ``report.html`` and ``plots/``. A benchmark folder (:class:`BenchDir`) holds
``split.json``, ``runs/<recipe>/seed<k>/`` and ``results.json`` / ``results.md``.

Example:
    >>> run = RunDir("runs/unet")
    >>> run.checkpoint("last").as_posix()
    'runs/unet/checkpoints/last.ckpt'
    >>> run.per_image_path("test").as_posix()
    'runs/unet/eval/test/per_image.csv'
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from celltune.config import (
    RunConfig,
    StudyConfig,
    load_run_config,
    load_study_config,
    save_run_config,
)
from celltune.data.samples import Splits
from celltune.errors import RunError
from celltune.io import read_array, write_png, write_text

#: The run's checkpoints: the best validation Dice, and the last epoch (to resume from).
CHECKPOINTS = {"best": "best.ckpt", "last": "last.ckpt"}


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{path}: not found; {what}.") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RunError(f"{path}: unreadable ({exc}); {what}.") from exc


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns))
    writer.writeheader()
    writer.writerows(rows)
    return write_text(path, buf.getvalue())


class RunDir:
    """One training run's folder (it need not exist yet)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    # --- paths -----------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def splits_path(self) -> Path:
        return self.path / "splits.json"

    @property
    def fingerprint_path(self) -> Path:
        """The training images' fingerprint, also the cache a resumed or DDP run reads."""
        return self.path / "fingerprint.json"

    @property
    def threshold_path(self) -> Path:
        return self.path / "threshold.json"

    @property
    def postprocess_path(self) -> Path:
        return self.path / "postprocess.json"

    @property
    def done_path(self) -> Path:
        return self.path / "done.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def data_dir(self) -> Path:
        """Where the synthetic dataset goes when a run names no data root."""
        return self.path / "data"

    @property
    def plots_dir(self) -> Path:
        return self.path / "plots"

    @property
    def loss_plot(self) -> Path:
        return self.plots_dir / "loss.png"

    @property
    def threshold_plot(self) -> Path:
        return self.plots_dir / "threshold.png"

    @property
    def postprocess_plot(self) -> Path:
        return self.plots_dir / "postprocess.png"

    @property
    def export_dir(self) -> Path:
        return self.path / "export"

    def checkpoint(self, which: str = "best") -> Path:
        """``checkpoints/best.ckpt`` or ``checkpoints/last.ckpt``.

        Another name gives a path that does not exist, which loading reports by name.
        """
        return self.checkpoints_dir / CHECKPOINTS.get(which, f"{which}.ckpt")

    def eval_dir(self, split: str) -> Path:
        return self.path / "eval" / split

    def summary_path(self, split: str) -> Path:
        return self.eval_dir(split) / "summary.json"

    def per_image_path(self, split: str) -> Path:
        return self.eval_dir(split) / "per_image.csv"

    def mask_path(self, split: str, image: str) -> Path:
        return self.eval_dir(split) / "masks" / f"{image}.png"

    @classmethod
    def of_checkpoint(cls, checkpoint: str | os.PathLike) -> RunDir | None:
        """The run folder a checkpoint sits in (``RUN/checkpoints/x.ckpt``), if it is one."""
        path = Path(checkpoint)
        if path.parent.name != "checkpoints":
            return None
        run = cls(path.parent.parent)
        return run if run.config_path.is_file() else None

    # --- config and splits -----------------------------------------------------------------
    def is_run(self) -> bool:
        return self.config_path.is_file()

    def read_config(self) -> RunConfig:
        if not self.config_path.is_file():
            raise RunError(f"{self.path}: not a celltune run folder (no {self.config_path.name}).")
        return load_run_config(self.config_path)

    def write_config(self, config: RunConfig, provenance: dict[str, Any] | None = None) -> Path:
        return save_run_config(config, self.config_path, provenance)

    def read_splits(self) -> Splits:
        if not self.splits_path.is_file():
            raise RunError(
                f"{self.path}: no {self.splits_path.name}; pass --data to choose the images."
            )
        return Splits.load(self.splits_path)

    def write_splits(self, splits: Splits) -> Path:
        return splits.save(self.splits_path)

    # --- threshold and completion ----------------------------------------------------------
    def read_threshold(self) -> float:
        """The chosen threshold, or 0.5 before one was chosen."""
        if not self.threshold_path.is_file():
            return 0.5
        data = _read_json(self.threshold_path, self._retune_hint())
        try:
            return float(data["best_threshold"])
        except (KeyError, TypeError, ValueError) as exc:
            raise RunError(f"{self.threshold_path}: unreadable threshold file ({exc}); "
                           f"{self._retune_hint()}.") from exc

    def read_threshold_curve(self) -> dict[str, Any] | None:
        """The whole threshold sweep (for figures), or None before one was made."""
        if not self.threshold_path.is_file():
            return None
        return _read_json(self.threshold_path, self._retune_hint())

    def write_threshold(self, result: Any) -> Path:
        """Write a :class:`~celltune.evaluation.threshold.ThresholdResult` (its JSON)."""
        return write_text(self.threshold_path, result.to_json())

    def read_postprocess(self) -> dict[str, Any]:
        """The tuned instance parameters (``best`` of ``postprocess.json``); empty before a
        tuning, when the defaults apply."""
        curve = self.read_postprocess_curve()
        if curve is None:
            return {}
        best = curve.get("best")
        if not isinstance(best, dict):
            raise RunError(f"{self.postprocess_path}: has no 'best' parameters; "
                           f"{self._retune_hint()}.")
        return best

    def read_postprocess_curve(self) -> dict[str, Any] | None:
        """The whole post-processing sweep (for figures), or None before one was made."""
        if not self.postprocess_path.is_file():
            return None
        return _read_json(self.postprocess_path, self._retune_hint())

    def _retune_hint(self) -> str:
        return f"choose it again with `celltune evaluate {self.path} --retune`"

    def write_postprocess(self, result: Any) -> Path:
        """Write a :class:`~celltune.evaluation.postprocess.PostprocessResult` (its JSON)."""
        return write_text(self.postprocess_path, result.to_json())

    def is_done(self) -> bool:
        return self.done_path.is_file()

    def read_done(self) -> dict[str, Any]:
        return _read_json(self.done_path, "rerun this row of the study")

    def write_done(self, threshold: float, train_seconds: float) -> Path:
        info = {"threshold": threshold, "train_seconds": round(train_seconds, 2)}
        return write_text(self.done_path, json.dumps(info, indent=2))

    # --- training history ------------------------------------------------------------------
    def read_metrics(self) -> list[dict[str, float]]:
        """Rows of ``metrics.csv`` as floats (empty list when the file is absent)."""
        if not self.metrics_path.is_file():
            return []
        with self.metrics_path.open(newline="", encoding="utf-8") as fh:
            return [
                {k: float(v) if v not in ("", None) else math.nan for k, v in r.items()}
                for r in csv.DictReader(fh)
            ]

    def write_metrics(self, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
        return _write_csv(self.metrics_path, rows, columns)

    # --- evaluation ---------------------------------------------------------------------------
    def read_summary(self, split: str = "test") -> dict[str, Any]:
        path = self.summary_path(split)
        if not path.is_file():
            raise RunError(f"{path}: not found; run `celltune evaluate {self.path}` first.")
        return _read_json(path, f"run `celltune evaluate {self.path}` again")

    def write_summary(self, split: str, summary: Mapping[str, Any]) -> Path:
        return write_text(self.summary_path(split), json.dumps(summary, indent=2) + "\n")

    def read_per_image(self, split: str = "test") -> list[dict[str, Any]]:
        """Per-image rows: ``name`` as text, every other column as a float (an empty cell, a
        column an older celltune did not write, as NaN)."""
        path = self.per_image_path(split)
        if not path.is_file():
            raise RunError(f"{path}: not found; run `celltune evaluate {self.path}` first.")
        with path.open(newline="", encoding="utf-8") as fh:
            return [
                {k: (v if k == "name" else float(v) if v not in ("", None) else math.nan)
                 for k, v in row.items()}
                for row in csv.DictReader(fh)
            ]

    def write_per_image(
        self, split: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]
    ) -> Path:
        """Floats with six decimals, everything else as given."""
        formatted = [
            {k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows
        ]
        return _write_csv(self.per_image_path(split), formatted, columns)

    def write_mask(self, split: str, image: str, mask: np.ndarray) -> Path:
        """A predicted mask as a 0/255 PNG."""
        return write_png(self.mask_path(split, image), mask.astype(np.uint8) * 255)

    def has_mask(self, split: str, image: str) -> bool:
        return self.mask_path(split, image).is_file()

    def read_mask(self, split: str, image: str, shape: tuple[int, int]) -> np.ndarray:
        """A saved mask as bool; RunError when its size differs from ``shape`` (H, W)."""
        path = self.mask_path(split, image)
        mask = np.asarray(read_array(path))
        if mask.ndim == 3:
            mask = mask[..., 0]
        if mask.shape != shape:
            raise RunError(
                f"{path}: mask size {mask.shape[1]}×{mask.shape[0]} differs from its image's "
                f"{shape[1]}×{shape[0]}; re-run the evaluation."
            )
        return mask != 0


class StudyDir:
    """A study's folder: one :class:`RunDir` per row plus the report."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"StudyDir({str(self.path)!r})"

    @property
    def config_path(self) -> Path:
        return self.path / "study.yaml"

    @property
    def data_dir(self) -> Path:
        """The synthetic dataset shared by every row when the study names no data root."""
        return self.path / "data"

    @property
    def results_md(self) -> Path:
        return self.path / "results.md"

    @property
    def results_csv(self) -> Path:
        return self.path / "results.csv"

    @property
    def report_html(self) -> Path:
        return self.path / "report.html"

    @property
    def plots_dir(self) -> Path:
        return self.path / "plots"

    def figure(self, key: str) -> Path:
        """``plots/<file>`` of a report figure: ``loss``, ``threshold`` or ``masks``."""
        files = {"loss": "loss_curves.png", "threshold": "threshold_curves.png",
                 "masks": "masks.png"}
        return self.plots_dir / files[key]

    def run(self, row: str) -> RunDir:
        return RunDir(self.path / row)

    def finished_rows(self) -> list[str]:
        """Names of the sub-folders holding a finished run, sorted."""
        return sorted(p.name for p in self.path.iterdir() if RunDir(p).is_done())

    def has_config(self) -> bool:
        return self.config_path.is_file()

    def read_config(self) -> StudyConfig:
        return load_study_config(self.config_path)

    def write_config(self, study: StudyConfig) -> Path:
        return save_run_config(study, self.config_path)


class BenchDir:
    """A quality benchmark's folder (``celltune bench``): the split, one folder per training,
    the results."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @property
    def split(self) -> Path:
        return self.path / "split.json"

    @property
    def results_json(self) -> Path:
        return self.path / "results.json"

    @property
    def results_md(self) -> Path:
        return self.path / "results.md"

    def training(self, recipe: str, seed: int) -> Path:
        """The work folder of one training (a celltune run folder for the celltune recipe)."""
        return self.path / "runs" / recipe / f"seed{seed}"

    def scores(self, recipe: str, seed: int) -> Path:
        return self.training(recipe, seed) / "scores.json"
