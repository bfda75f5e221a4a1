"""Fixtures for the AG2 1.x capture tests: a recording tracker with capture installed.

These tests need the ``ag2`` 1.x framework, which cannot share a virtualenv with the ``ag2`` 0.x
the main suite uses: ``.ci/ag2-1x.sh`` runs them (pytest does not recurse into this directory
on its own; it runs when named).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path[:0] = [str(HERE), str(HERE.parent / "ag2")]  # scenarios.py, checks.py, ag2_checks.py

import ag2  # noqa: E402,F401  (AG2 1.x is required: these tests never skip)

from agent_shim import ag2_v1  # noqa: E402
from agent_shim.testing import RecordingSink, recording_tracker  # noqa: E402
from agent_shim.tracker import Tracker  # noqa: E402


@pytest.fixture
def capture() -> Iterator[tuple[Tracker, RecordingSink]]:
    """A recording tracker with AG2 1.x capture installed for the test, removed afterwards."""
    tracker, sink = recording_tracker()
    assert ag2_v1.install(tracker)
    try:
        yield tracker, sink
    finally:
        ag2_v1.uninstall()
