"""Stopping and continuing training safely: interrupted runs and checkpoint compatibility.

Lightning handles Ctrl+C by calling ``sys.exit(1)`` and SIGTERM by raising a ``SystemExit``
whose code is 0, so without help an interrupted ``celltune train`` exits silently, after a
SIGTERM even with the code of success. :func:`interruptible` turns both into
:class:`~celltune.errors.Interrupted` (exit code 130 or 143) naming the run folder and
``--resume``. :func:`check_checkpoint` refuses a checkpoint of another model with a sentence
naming the file, instead of a ``state_dict`` traceback.

Example:
    >>> with interruptible(trainer, run_dir):                     # doctest: +SKIP
    ...     trainer.fit(module, train_dl, val_dl, ckpt_path=ckpt)
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from celltune.config import ModelConfig, RunConfig
from celltune.errors import Interrupted, RunError

# Fields of the model section that decide the network's architecture; the initial weights do
# not (a checkpoint replaces them).
_ARCHITECTURE = ("name", "encoder", "head", "options")


@contextlib.contextmanager
def interruptible(trainer: Any, run_dir: Path) -> Iterator[None]:
    """Run ``trainer.fit`` inside; an interruption becomes :class:`Interrupted`.

    Also restores the SIGINT handler, which Lightning sets to "ignore" after a Ctrl+C so a
    second one cannot disturb its shutdown; left that way, the process could never be
    interrupted again (a study training its next row, or a test session).
    """
    main_thread = threading.current_thread() is threading.main_thread()
    sigint = signal.getsignal(signal.SIGINT) if main_thread else None
    try:
        yield
    except SystemExit as exc:
        if not getattr(trainer, "interrupted", False):
            raise
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        name, code = ("SIGTERM", 143) if isinstance(exc, SIGTERMException) else ("SIGINT", 130)
        raise Interrupted(
            f"{run_dir}: training interrupted by {name} in epoch {trainer.current_epoch + 1}; "
            "continue from the last checkpoint with --resume.",
            exit_code=code,
        ) from None
    finally:
        if main_thread and sigint is not None:
            signal.signal(signal.SIGINT, sigint)


def architecture(model: dict[str, Any] | ModelConfig, in_channels: int) -> dict[str, Any]:
    """The parts of a model description that must match for weights to fit."""
    data = model.model_dump(mode="json") if isinstance(model, ModelConfig) else dict(model)
    arch = {key: data.get(key) for key in _ARCHITECTURE}
    arch["options"] = dict(arch["options"] or {})
    arch["in_channels"] = int(in_channels)
    return arch


def describe(arch: dict[str, Any]) -> str:
    """``unet (head binary, 1 channel, options tiny=True)`` for error messages."""
    extras = [f"head {arch['head']}", f"{arch['in_channels']} channel(s)"]
    if arch.get("encoder"):
        extras.append(f"encoder {arch['encoder']}")
    if arch.get("options"):
        extras.append(", ".join(f"{k}={v}" for k, v in sorted(arch["options"].items())))
    return f"{arch['name']!r} ({', '.join(extras)})"


def mismatch(
    checkpoint: Path, hparams: dict[str, Any], expected: dict[str, Any], source: str | os.PathLike
) -> RunError | None:
    """A :class:`RunError` when the checkpoint's architecture differs from ``expected``."""
    found = architecture(hparams.get("model", {}), hparams.get("in_channels", 1))
    if found == expected:
        return None
    return RunError(
        f"{checkpoint}: checkpoint holds model {describe(found)} but {source} describes "
        f"{describe(expected)}; use that run's own checkpoint or start over with --overwrite."
    )


def read_hparams(path: Path) -> dict[str, Any]:
    """The hyperparameters stored in a Lightning checkpoint; RunError naming the file if unusable."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        # torch's messages run to several sentences of advice; the first says what is wrong.
        text = str(exc).strip()
        reason = text.splitlines()[0].split(". ")[0].rstrip(".") if text else type(exc).__name__
        raise RunError(
            f"{path}: cannot read the checkpoint ({reason}); it is corrupt or not a checkpoint."
        ) from exc
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or "model" not in hparams:
        raise RunError(f"{path}: not a celltune checkpoint (no model hyperparameters).")
    return hparams


def check_checkpoint(path: Path, config: RunConfig, source: str | os.PathLike) -> None:
    """Raise RunError naming ``path`` unless it can continue training ``config``."""
    hparams = read_hparams(path)
    error = mismatch(path, hparams, architecture(config.model, config.data.channels), source)
    if error is not None:
        raise error
