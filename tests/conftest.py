"""Shared test setup: never reach the network, keep plots headless, locate shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests must never download weights or data; a hub call fails fast instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# Qt widgets (the napari plugin's tests) run headless unless a display is asked for.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tests use tiny models: on shared cores extra OpenMP threads only spin against other
    processes and can make small ops ten to a hundred times slower than one thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the project; skips (saying where it looked) when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared development data not found at {SHARED_DATA} (fresh clone)")
    return SHARED_DATA
