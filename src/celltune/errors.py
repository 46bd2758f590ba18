"""User-facing errors.

Every error a user can cause (a bad file, an unknown name, a missing folder) is raised as a
:class:`CelltuneError` subclass whose message is one sentence naming the file or option and
what to do. The CLI prints that sentence and exits non-zero; tracebacks are kept for bugs.
"""

from __future__ import annotations


class CelltuneError(Exception):
    """Base class for errors caused by input, configuration or environment."""

    exit_code = 1


class ImageReadError(CelltuneError):
    """An image or label file cannot be read or has unusable content."""


class DataError(CelltuneError):
    """A dataset is malformed: unpaired files, mismatched sizes, nothing left after filtering."""


class ConfigError(CelltuneError):
    """A configuration value or name is invalid."""

    exit_code = 2


class WeightsError(CelltuneError):
    """Pretrained weights are unavailable or incompatible."""


class RunError(CelltuneError):
    """A run folder is missing, incomplete, or would be overwritten."""


class OutputError(CelltuneError):
    """An output file or folder cannot be written (a path under a file, no permission...)."""


class DownloadError(CelltuneError):
    """A download failed, was corrupted, or the network is unreachable."""


class Interrupted(RunError):
    """Training was stopped by SIGINT (Ctrl+C) or SIGTERM; ``--resume`` continues it.

    The exit code follows the shell convention 128 + signal number: 130 for SIGINT, 143 for
    SIGTERM.
    """

    exit_code = 130

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code
