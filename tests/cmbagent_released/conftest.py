"""The zero-code CMBAgent capture on the newest released CMBAgent (PyPI ``cmbagent-update``),
in a virtualenv of its own (``.ci/cmbagent-versions.sh``), recording into a list."""

from __future__ import annotations

from collections.abc import Iterator

import cmbagent  # the released CMBAgent is required: these tests never skip
import pytest

from agent_shim import cmbagent_capture
from agent_shim.context import CURRENT
from agent_shim.testing import RecordingSink, recording_tracker
from agent_shim.tracker import Tracker

TRACKER, SINK = recording_tracker()
assert cmbagent_capture.install(cmbagent, TRACKER) == "released"


@pytest.fixture
def capture() -> Iterator[tuple[Tracker, RecordingSink]]:
    SINK.records.clear()
    token = CURRENT.set(None)
    yield TRACKER, SINK
    CURRENT.reset(token)
