"""Real AG2 1.x conversations (AG2's scripted model, no network) captured exactly once each."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict

import pytest
import scenarios
from ag2_checks import rows_from_records
from checks import check_v1_capture

from agent_shim import ag2_v1


@pytest.mark.parametrize("name", list(scenarios.SCENARIOS))
def test_scenario_is_captured_exactly_once(name, capture):
    tracker, sink = capture
    with tracker.run(name) as run:
        expected = asyncio.run(scenarios.SCENARIOS[name]())

    events, costs, problems = rows_from_records(sink.records)
    problems += check_v1_capture(events, costs, json.loads(expected.to_json()), scenarios.SECRET,
                                 run=run.id)
    if scenarios.SECRET in json.dumps(sink.records, default=repr):
        problems.append("the planted secret is in a serialised record")
    assert ag2_v1.disabled_hooks() == []
    assert problems == []
    assert sum(ag2_v1.unpriced().values()) == expected.usage.unpriced
