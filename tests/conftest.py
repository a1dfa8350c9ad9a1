"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


def _shared_data_dir() -> Path | None:
    env = os.environ.get("MEDSEG_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    for c in candidates:
        if c.is_dir():
            return c
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder (``../shared/data`` or ``$MEDSEG_SHARED_DATA``); skips when absent."""
    d = _shared_data_dir()
    if d is None:
        pytest.skip("real data folder ../shared/data not present")
    return d


@pytest.fixture(autouse=True)
def _seed_torch():
    """Every test starts from the same torch RNG state (numpy code takes explicit Generators)."""
    torch.manual_seed(0)
    yield
