"""Helpers shared by the benchmark scripts: the machine, its matmul peak, BENCHMARKS.md sections.

Each script owns one section of ``BENCHMARKS.md``, delimited by ``<!-- NAME:start -->`` and
``<!-- NAME:end -->``; :func:`write_section` replaces only that section (or appends it) so
scripts never overwrite each other's results.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from celltune.io import write_text

#: Packages whose versions are printed with every result.
VERSIONED = ("torch", "lightning", "segmentation-models-pytorch", "timm", "numpy", "albumentations")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available on this machine; use cpu.")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so a wall-clock reading covers it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def steady_rate(stamps: list[float], warmup: int, items: int) -> float:
    """Items/s between the end of step ``warmup`` and the last step; ``stamps`` end each step."""
    if not 1 <= warmup < len(stamps):
        raise ValueError(f"need more than {warmup} step times, got {len(stamps)}")
    return (len(stamps) - warmup) * items / (stamps[-1] - stamps[warmup - 1])


def interleaved_medians(passes: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each pass, alternating between them so drift hits all alike.

    A pass that returns a float reports its own duration (one timed in another process);
    otherwise its wall-clock time here is taken.
    """
    for run in passes.values():  # warm-up: lazy initialisation, allocator, kernel choice
        run()
    seconds: dict[str, list[float]] = {key: [] for key in passes}
    for _ in range(repeats):
        for key, run in passes.items():
            start = time.perf_counter()
            reported = run()
            elapsed = time.perf_counter() - start
            seconds[key].append(reported if isinstance(reported, float) else elapsed)
    return {key: statistics.median(values) for key, values in seconds.items()}


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (affinity), which can be fewer than the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def versions() -> dict[str, str]:
    """Installed versions of the packages that shape the numbers, plus Python."""
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def machine_info(device: torch.device) -> dict[str, str]:
    """What ran the benchmark: CPU, cores, torch threads and ISA, and the accelerator."""
    info = {
        "cpu": cpu_model(),
        "cores": f"{usable_cores()} usable of {os.cpu_count()}",
        "torch threads": str(torch.get_num_threads()),
        "cpu capability": torch.backends.cpu.get_cpu_capability(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def matmul_peak(
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    n: int | None = None,
    repeats: int = 5,
) -> float:
    """GFLOP/s of the best of ``repeats`` ``n``×``n`` matrix products (2·n³ FLOPs each).

    The best run, not the mean, estimates what the hardware can do: slower runs measure
    interference from other processes, not the machine.
    """
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)  # first call pays for allocation and kernel selection
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best / 1e9


def measure_peaks(device: torch.device) -> dict[str, float]:
    """Matmul GFLOP/s for each precision a training or inference path may run at here."""
    peaks = {"fp32": matmul_peak(device, torch.float32)}
    if device.type == "cuda":
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            peaks["tf32"] = matmul_peak(device, torch.float32)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
        peaks["bf16"] = matmul_peak(device, torch.bfloat16)
        peaks["fp16"] = matmul_peak(device, torch.float16)
    return peaks


def precision_key(precision: str, device: torch.device) -> str:
    """Lightning precision string -> key of :func:`measure_peaks`.

    "fp32" work on CUDA runs its convolutions in TF32 (cuDNN's default in PyTorch), so it is
    held against the TF32 peak there.
    """
    if precision.startswith("bf16"):
        return "bf16"
    if precision.startswith("16"):
        return "fp16"
    tf32 = device.type == "cuda" and torch.backends.cudnn.allow_tf32
    return "tf32" if tf32 else "fp32"


def command_line(script: str, argv: list[str] | None = None) -> str:
    """The command that produced this run (``argv`` defaults to this process's arguments)."""
    return shlex.join(["python", script, *(sys.argv[1:] if argv is None else argv)])


def timestamp() -> str:
    """Current UTC time, to the minute."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


#: A results table column: (row key, header, format string); the first column is left-aligned.
Column = tuple[str, str, str]


def format_rows(columns: Sequence[Column], rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Each row's cells as text, in column order."""
    return [[fmt.format(row[key]) for key, _, fmt in columns] for row in rows]


def markdown_table(columns: Sequence[Column], rows: Sequence[dict[str, Any]]) -> str:
    """A GitHub markdown table; numeric columns right-aligned."""
    header = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "|---|" + "---:|" * (len(columns) - 1)
    body = ["| " + " | ".join(cells) + " |" for cells in format_rows(columns, rows)]
    return "\n".join([header, rule, *body])


def print_table(columns: Sequence[Column], rows: Sequence[dict[str, Any]], title: str) -> None:
    """The same table on the terminal, with rich."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, (_, header, _) in enumerate(columns):
        table.add_column(header, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for cells in format_rows(columns, rows):
        table.add_row(*cells)
    Console(width=max(120, 14 * len(columns))).print(table)


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def replace_section(text: str, name: str, body: str) -> str:
    """``text`` with section ``name`` replaced by ``body`` (appended when absent)."""
    start, end = _markers(name)
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text, count=1)
    head = text.rstrip()
    return f"{head}\n\n{block}\n" if head else f"# Benchmarks\n\n{block}\n"


def write_section(path: str | os.PathLike, name: str, body: str) -> Path:
    """Replace (or add) section ``name`` of the markdown file at ``path``, atomically."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    return write_text(path, replace_section(text, name, body))
