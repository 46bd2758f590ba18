"""What celltune's C-allocator setting (celltune.runtime) gains, model by model.

Each measurement runs in a fresh Python process, once with glibc's default ``malloc``
settings and once after :func:`celltune.runtime.tune_allocator`, alternating: the naive
training loop of throughput.py (fp32, Adam, BCE, one in-memory batch) and naive ``model(x)``
inference on a batch of tiles. Reported: seconds per step, kernel (system) CPU time, minor
page faults and peak resident memory of the process.

Example:
    python benchmarks/allocator.py                      # unet and swin_unet, writes BENCHMARKS.md
    python benchmarks/allocator.py --models unet --steps 4 --out none
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

SECTION = "allocator"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
MODES = ("default", "tuned")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["unet", "swin_unet"], help="registered models")
    p.add_argument("--batch-size", type=int, default=8, help="images per step (8)")
    p.add_argument("--size", type=int, default=256, help="image side (256)")
    p.add_argument("--steps", type=int, default=8, help="timed steps after 2 warm-up steps (8)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (all cores)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="markdown file; 'none' to skip")
    p.add_argument("--child", nargs=3, metavar=("MODEL", "TASK", "MODE"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def child(args: argparse.Namespace) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    import torch
    from _naive import build_model, training_step

    from celltune.runtime import tune_allocator

    name, task, mode = args.child
    applied = tune_allocator() if mode == "tuned" else False
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    model = build_model(name, False, cpu)
    if task == "train":
        step = training_step(model, args.batch_size, args.size, cpu)
    else:
        model.eval()
        x = torch.rand(args.batch_size, 1, args.size, args.size)

        def step() -> None:
            with torch.no_grad():
                model(x)

    seconds = []
    for i in range(2 + args.steps):
        if i == 2:
            usage = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    end = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "applied": applied,
                "step_s": statistics.median(seconds[2:]),
                "sys_s": (end.ru_stime - usage.ru_stime) / args.steps,
                "faults": (end.ru_minflt - usage.ru_minflt) / args.steps,
                "peak_mib": end.ru_maxrss / 1024,
            }
        )
    )


def measure(args: argparse.Namespace, name: str, task: str, mode: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["CELLTUNE_TUNE_MALLOC"] = "1"
    command = [sys.executable, __file__, "--child", name, task, mode, "--steps", str(args.steps),
               "--batch-size", str(args.batch_size), "--size", str(args.size),
               "--threads", str(args.threads)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.child:
        child(args)
        return []
    import torch
    from _common import (
        command_line,
        machine_info,
        markdown_table,
        print_table,
        timestamp,
        write_section,
    )

    rows = []
    for name in args.models:
        for task in ("train", "infer"):
            got = {mode: measure(args, name, task, mode) for mode in MODES}
            if not got["tuned"]["applied"]:
                raise SystemExit("the allocator setting does not apply here (not glibc Linux?)")
            d, t = got["default"], got["tuned"]
            rows.append({
                "model": name, "task": task,
                "step_default": d["step_s"], "step_tuned": t["step_s"],
                "speedup": d["step_s"] / t["step_s"],
                "sys_default": d["sys_s"], "sys_tuned": t["sys_s"],
                "faults_default": d["faults"] / 1e3, "faults_tuned": t["faults"] / 1e3,
                "peak_default": d["peak_mib"], "peak_tuned": t["peak_mib"],
            })
    columns = [
        ("model", "model", "{}"), ("task", "task", "{}"),
        ("step_default", "s/step default", "{:.2f}"), ("step_tuned", "s/step tuned", "{:.2f}"),
        ("speedup", "speed-up", "{:.2f}×"),
        ("sys_default", "kernel s/step default", "{:.2f}"),
        ("sys_tuned", "kernel s/step tuned", "{:.2f}"),
        ("faults_default", "k faults/step default", "{:.0f}"),
        ("faults_tuned", "k faults/step tuned", "{:.0f}"),
        ("peak_default", "peak MiB default", "{:.0f}"), ("peak_tuned", "peak MiB tuned", "{:.0f}"),
    ]
    title = f"glibc malloc default vs celltune.runtime ({args.batch_size}×{args.size}²)"
    print_table(columns, rows, title)
    machine = "; ".join(f"{k}: {v}" for k, v in machine_info(torch.device("cpu")).items())
    body = "\n".join([
        "## C allocator: glibc defaults vs `celltune.runtime.tune_allocator`",
        "",
        f"Measured {timestamp()}. Machine: {machine}.",
        f"Command: `{command_line('benchmarks/allocator.py', argv)}`",
        f"Each cell: a fresh process, batch {args.batch_size}×{args.size}², median of "
        f"{args.steps} steps after 2 warm-up steps; naive fp32 loops (no Lightning, no "
        "channels_last), so only the allocator differs.",
        "",
        markdown_table(columns, rows),
    ])
    if args.out.lower() != "none":
        print(f"wrote {write_section(args.out, SECTION, body)}")
    return rows


if __name__ == "__main__":
    main()
