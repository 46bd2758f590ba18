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

from celltune.config import RunConfig
from celltune.errors import Interrupted
from celltune.models.checkpoint import architecture, mismatch, read_hparams


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


def check_checkpoint(path: Path, config: RunConfig, source: str | os.PathLike) -> None:
    """Raise RunError naming ``path`` unless it can continue training ``config``."""
    hparams = read_hparams(path)
    error = mismatch(path, hparams, architecture(config.model, config.data.channels), source)
    if error is not None:
        raise error
