"""Process-wide settings that make PyTorch faster on a CPU.

glibc's ``malloc`` serves every block above its mmap threshold (128 KiB at start, raised
automatically to at most 32 MiB) with a fresh ``mmap`` and hands it back to the kernel on
``free``. A CPU training or inference step allocates and frees activations of tens of
megabytes, so every step page-faults on memory the kernel must zero again: on the 2-core
development machine that was 12-29% of the CPU time in the kernel. Keeping such blocks in the
heap instead made training steps (8x256², fp32) 1.13-1.40x faster and inference 1.30-1.44x
faster for U-Net, U-Net++ and Swin-Unet, with peak resident memory between 5% lower and 21%
higher (``benchmarks/allocator.py``, BENCHMARKS.md).

:func:`tune_allocator` raises glibc's mmap and trim thresholds to 1 GiB with ``mallopt``. It
does nothing on other C libraries, when the user already tuned glibc through its environment
variables or preloads another allocator (jemalloc, tcmalloc, mimalloc), or when
``CELLTUNE_TUNE_MALLOC=0``.

Example:
    >>> from celltune.runtime import tune_allocator
    >>> tune_allocator() in (True, False)
    True
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

#: Set to ``0`` to leave the C allocator alone.
OPT_OUT_ENV = "CELLTUNE_TUNE_MALLOC"
#: Blocks below this come from the heap and stay there when freed.
MMAP_THRESHOLD = 1 << 30
#: Free memory at the top of the heap beyond this is returned to the kernel.
TRIM_THRESHOLD = 1 << 30
# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# The user's own glibc malloc settings, which take precedence.
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")

_state: dict[str, bool] = {}


def allocator_policy() -> str | None:
    """Why :func:`tune_allocator` would leave the allocator alone, or ``None`` if it would not."""
    if os.environ.get(OPT_OUT_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return f"{OPT_OUT_ENV}=0"
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return "the C library is not glibc"
    if any(name in os.environ for name in _USER_SETTINGS) or "malloc" in os.environ.get(
        "GLIBC_TUNABLES", ""
    ):
        return "glibc malloc is already configured through the environment"
    preload = os.environ.get("LD_PRELOAD", "")
    if any(name in preload for name in _OTHER_ALLOCATORS):
        return "another allocator is preloaded"
    return None


def tune_allocator() -> bool:
    """Keep large freed blocks in the process heap; returns whether the setting is in force.

    Safe to call many times (only the first call does anything) and from any process; forked
    DataLoader workers inherit the setting.
    """
    if "applied" not in _state:
        _state["applied"] = allocator_policy() is None and _set_thresholds()
    return _state["applied"]


def _set_thresholds() -> bool:
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success. Setting either threshold also stops glibc adjusting the
    # mmap threshold on its own, so both are set together.
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
