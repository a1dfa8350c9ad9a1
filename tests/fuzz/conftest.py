"""Fixtures of the fuzz campaign: one sandbox worker per session, and a count of the cases run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fuzz_harness import Sandbox  # noqa: E402

_SANDBOX = Sandbox()


@pytest.fixture(scope="session")
def sandbox():
    """The worker process every fuzz case runs in (started once, restarted after a failure)."""
    yield _SANDBOX
    _SANDBOX.close()


def pytest_terminal_summary(terminalreporter):
    """Print the cases run per reader and their outcomes (the campaign's table)."""
    if not _SANDBOX.counts:
        return
    tr = terminalreporter
    tr.section("medseg fuzz campaign: cases per reader")
    total = 0
    for reader, c in sorted(_SANDBOX.counts.items()):
        n = sum(c.values())
        total += n
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
        tr.write_line(f"{reader:14s} {n:7d}  ({outcomes})")
    tr.write_line(f"{'total':14s} {total:7d}")
