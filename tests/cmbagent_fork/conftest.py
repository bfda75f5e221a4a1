"""The zero-code CMBAgent capture on the fork itself (``UJ2202/MARS``, vendored in
``shared/vendor/cmbagent-fork``), in a virtualenv of its own (``.ci/cmbagent-fork.sh``): the
real ``cmbagent`` package with the capture installed, recording into a list."""

from __future__ import annotations

from collections.abc import Iterator

import cmbagent  # the fork is required: these tests never skip
import pytest

from agent_shim import cmbagent_capture
from agent_shim.context import CURRENT
from agent_shim.testing import RecordingSink, recording_tracker
from agent_shim.tracker import Tracker

TRACKER, SINK = recording_tracker()
assert cmbagent_capture.install(cmbagent, TRACKER) == "fork"


@pytest.fixture
def capture() -> Iterator[tuple[Tracker, RecordingSink]]:
    """The recording tracker the fork's hooks record into, emptied for the test, which starts
    outside any run."""
    SINK.records.clear()
    token = CURRENT.set(None)
    yield TRACKER, SINK
    CURRENT.reset(token)
