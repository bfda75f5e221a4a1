"""Real AG2 conversations (scripted model, no network) captured exactly once each."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import scenarios
from ag2_checks import check_capture, rows_from_records

from agent_shim import ag2

#: Agents AG2 creates for itself, and the role their agent calls must be marked with.
INTERNAL_ROLES = {"chat_manager": "group_manager", "checking_agent": "speaker_selector",
                  "speaker_selection_agent": "speaker_selector",
                  "_Group_Tool_Executor": "tool_executor"}


@pytest.mark.parametrize("name", list(scenarios.SCENARIOS))
def test_scenario_is_captured_exactly_once(name, capture):
    tracker, sink = capture
    with tracker.run(name) as run:
        expected = scenarios.SCENARIOS[name]()

    assert expected.unconsumed == 0, "the conversation did not run as scripted"
    events, costs, problems = rows_from_records(sink.records)
    problems += check_capture(events, costs, counts=expected.counts, usage=asdict(expected.usage),
                              secret=scenarios.SECRET, failed=expected.failed,
                              terminations=expected.terminations, run=run.id)
    handoffs = [e["meta"]["decided_by"] for e in events if e["event_type"] == "handoff"]
    if handoffs != expected.handoffs:
        problems.append(f"handoffs decided by {handoffs}, expected {expected.handoffs}")
    askers = [e["agent_name"] for e in events if e["event_type"] == "tool_call"]
    if askers != expected.tool_askers:
        problems.append(f"tools asked for by {askers}, expected {expected.tool_askers}")
    roles = {(e["agent_name"], (e["meta"] or {}).get("role"))
             for e in events if e["event_type"] == "agent_call"}
    wrong = {(agent, role) for agent, role in roles if INTERNAL_ROLES.get(agent) != role}
    if wrong:
        problems.append(f"agent calls with a wrong internal role: {sorted(wrong, key=str)}")
    if scenarios.SECRET in json.dumps(sink.records, default=lambda v: repr(v)):
        problems.append("the planted secret is in a serialised record")
    assert ag2.disabled_hooks() == []
    assert problems == []
