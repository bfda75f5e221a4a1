"""The zero-code CMBAgent capture on the newest released CMBAgent (PyPI ``cmbagent-update``),
in a virtualenv of its own (``.ci/cmbagent-versions.sh``): in this process recording into a
list, and in CMBAgent programs run as a user would, into a real collector and PostgreSQL."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import cmbagent  # the released CMBAgent is required: these tests never skip
import pytest

from agent_shim import cmbagent_capture
from agent_shim.context import CURRENT
from agent_shim.testing import RecordingSink, recording_tracker
from agent_shim.tracker import Tracker

# The repository's tests package, after site-packages: the installed agent_shim stays the one
# tested.
sys.path.append(str(Path(__file__).resolve().parents[2]))
from tests.conftest import (  # noqa: E402,F401  (the collector's fixtures)
    agent_env,
    collector,
    database,
    postgres_admin,
    template_database,
)

TRACKER, SINK = recording_tracker()
assert cmbagent_capture.install(cmbagent, TRACKER) == "released"


@pytest.fixture
def capture() -> Iterator[tuple[Tracker, RecordingSink]]:
    SINK.records.clear()
    token = CURRENT.set(None)
    yield TRACKER, SINK
    CURRENT.reset(token)
