"""The C-allocator setting in celltune.runtime: when it applies and what it changes."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from celltune import runtime

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# Allocates, touches and frees a 64 MiB buffer 20 times (above glibc's largest automatic
# mmap threshold, 32 MiB) and reports the page faults that took. Transparent huge pages are
# turned off for the probe (prctl PR_SET_THP_DISABLE): with them a fresh mapping faults in
# 2 MiB at a time, and whether the kernel backs it with huge pages varies from run to run.
PROBE = """
import ctypes, json, resource, sys
ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)
import numpy as np
from celltune.runtime import tune_allocator
applied = tune_allocator()
np.ones(16 * 2**20, dtype=np.float32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    np.ones(16 * 2**20, dtype=np.float32)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": applied, "faults": faults}))
"""


def probe(**env: str) -> dict[str, int | bool]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "CELLTUNE_"))}
    clean.pop("LD_PRELOAD", None)
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True,
        check=True, timeout=60,
    )
    return json.loads(done.stdout)


@pytest.mark.skipif(not GLIBC, reason="the allocator setting applies to glibc on Linux only")
def test_tuned_process_reuses_freed_blocks_instead_of_faulting_them_in_again() -> None:
    tuned, default = probe(), probe(CELLTUNE_TUNE_MALLOC="0")
    assert tuned["applied"] is True and default["applied"] is False
    # 20 x 64 MiB freshly mapped = 20 x 16384 faults of 4 KiB pages without the setting;
    # with it the freed block is reused from the heap.
    assert default["faults"] > 20 * 100
    assert tuned["faults"] * 10 < default["faults"]


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"CELLTUNE_TUNE_MALLOC": "0"}, "CELLTUNE_TUNE_MALLOC=0"),
        ({"CELLTUNE_TUNE_MALLOC": "off"}, "CELLTUNE_TUNE_MALLOC=0"),
        ({"MALLOC_MMAP_THRESHOLD_": "65536"}, "already configured"),
        ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}, "already configured"),
        ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, "another allocator"),
    ],
)
def test_users_own_settings_win(monkeypatch: pytest.MonkeyPatch, env: dict, reason: str) -> None:
    for key in ("CELLTUNE_TUNE_MALLOC", *runtime._USER_SETTINGS, "GLIBC_TUNABLES", "LD_PRELOAD"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(runtime.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(runtime.sys, "platform", "linux")
    assert reason in runtime.allocator_policy()


def test_other_c_libraries_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CELLTUNE_TUNE_MALLOC", raising=False)
    monkeypatch.setattr(runtime.platform, "libc_ver", lambda: ("", ""))
    assert runtime.allocator_policy() == "the C library is not glibc"
    monkeypatch.setattr(runtime.sys, "platform", "darwin")
    assert runtime.allocator_policy() == "the C library is not glibc"


def test_the_first_answer_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "_state", {})
    calls = []
    monkeypatch.setattr(runtime, "allocator_policy", lambda: calls.append(1))
    monkeypatch.setattr(runtime, "_set_thresholds", lambda: True)
    assert runtime.tune_allocator() is True
    assert runtime.tune_allocator() is True
    assert len(calls) == 1
