"""Fixtures for the AG2 capture tests: a recording tracker with the hooks installed."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # scenarios.py and ag2_checks.py

import autogen  # noqa: E402,F401  (an AG2 distribution is required: these tests never skip)

from agent_shim import ag2  # noqa: E402
from agent_shim.testing import RecordingSink, recording_tracker  # noqa: E402
from agent_shim.tracker import Tracker  # noqa: E402


@pytest.fixture
def capture() -> Iterator[tuple[Tracker, RecordingSink]]:
    """A recording tracker with the AG2 hooks installed for the test, removed afterwards."""
    tracker, sink = recording_tracker()
    assert ag2.install(tracker)
    try:
        yield tracker, sink
    finally:
        ag2.uninstall()
