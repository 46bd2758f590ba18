"""Shared test setup: never reach the network, keep plots headless, locate shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests must never download weights or data; a hub call fails fast instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the project; skips (saying where it looked) when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared development data not found at {SHARED_DATA} (fresh clone)")
    return SHARED_DATA
