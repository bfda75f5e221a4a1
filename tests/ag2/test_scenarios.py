"""Real AG2 conversations (scripted model, no network) captured exactly once each."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import scenarios
from ag2_checks import check_capture, rows_from_records

from agent_shim import ag2


@pytest.mark.parametrize("name", list(scenarios.SCENARIOS))
def test_scenario_is_captured_exactly_once(name, capture):
    tracker, sink = capture
    with tracker.run(name) as run:
        expected = scenarios.SCENARIOS[name]()

    assert expected.unconsumed == 0, "the conversation did not run as scripted"
    events, costs, problems = rows_from_records(sink.records)
    problems += check_capture(events, costs, counts=expected.counts, usage=asdict(expected.usage),
                              secret=scenarios.SECRET, failed=expected.failed,
                              terminations=expected.terminations)
    if any(e["run"] != run.id for e in events):
        problems.append("events outside the scenario's run")
    if scenarios.SECRET in json.dumps(sink.records, default=lambda v: repr(v)):
        problems.append("the planted secret is in a serialised record")
    assert ag2.disabled_hooks() == []
    assert problems == []
