"""Unmodified AG2 1.x programs, captured through the startup hook and checked in the database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import scenarios
from ag2_checks import check_capture
from checks import check_v1_capture

from tests.helpers.support import CollectorProcess, cost_rows, event_rows, fetch, wait_for

HERE = Path(__file__).parent


def _run_program(collector: CollectorProcess, agent_env: dict[str, str], cwd: Path,
                 *argv: str) -> dict[str, Any]:
    """Run a program under the installed startup hook only; its expectation, once stored."""
    env = {**os.environ, **agent_env, "CMBAGENT_COLLECTOR_URL": collector.url}
    result = subprocess.run([sys.executable, *argv], env=env, cwd=cwd, capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def _stored(collector: CollectorProcess, total: int) -> tuple[list[dict], list[dict]]:
    wait_for(lambda: len(event_rows(collector.dsn)) >= total)
    return event_rows(collector.dsn), cost_rows(collector.dsn)


def _nothing_leaked(dsn: str) -> None:
    # Each table may be empty (a program whose every LLM call failed has no cost row).
    everything = fetch(dsn, "SELECT coalesce((SELECT string_agg(t::text, '') "
                       "FROM execution_events t), '') || "
                       "coalesce((SELECT string_agg(c::text, '') FROM cost_records c), '') || "
                       "coalesce((SELECT string_agg(q::text, '') FROM quarantine q), '')")
    assert scenarios.SECRET not in everything[0][0]
    assert fetch(dsn, "SELECT count(*) FROM quarantine")[0][0] == 0


@pytest.mark.parametrize("name", list(scenarios.SCENARIOS))
def test_unmodified_program_is_captured_into_the_database(
        name: str, collector: CollectorProcess, agent_env: dict[str, str], tmp_path: Path) -> None:
    expected = _run_program(collector, agent_env, tmp_path, str(HERE / "scenarios.py"), name)
    events, costs = _stored(collector, sum(expected["counts"].values()))

    assert check_v1_capture(events, costs, expected, scenarios.SECRET) == []
    # One implicit run and one session for the whole program.
    assert len(fetch(collector.dsn, "SELECT id FROM workflow_runs")) == 1
    assert len(fetch(collector.dsn, "SELECT id FROM sessions")) == 1
    _nothing_leaked(collector.dsn)


def test_classic_and_v1_in_one_process_are_each_captured_once(
        collector: CollectorProcess, agent_env: dict[str, str], tmp_path: Path) -> None:
    expected = _run_program(collector, agent_env, tmp_path, str(HERE / "both_frameworks.py"))
    classic, v1 = expected["classic"], expected["v1"]
    total = sum(classic["counts"].values()) + sum(v1["counts"].values())
    events, costs = _stored(collector, total)

    # Split the run by the conversation each event descends from: 1.x marks its own.
    by_id = {e["id"]: e for e in events}

    def root(event: dict) -> dict:
        while event["parent_event_id"] is not None:
            event = by_id[event["parent_event_id"]]
        return event

    is_v1 = {e["id"]: (root(e)["meta"] or {}).get("framework") == "ag2" for e in events}
    v1_events = [e for e in events if is_v1[e["id"]]]
    classic_events = [e for e in events if not is_v1[e["id"]]]
    v1_costs = [c for c in costs if is_v1[c["event_id"]]]
    classic_costs = [c for c in costs if not is_v1[c["event_id"]]]

    assert check_v1_capture(v1_events, v1_costs, v1, scenarios.SECRET) == []
    assert check_capture(classic_events, classic_costs, counts=classic["counts"],
                         usage=classic["usage"], secret=scenarios.SECRET,
                         failed=classic["failed"], terminations=classic["terminations"]) == []
    assert len(fetch(collector.dsn, "SELECT id FROM workflow_runs")) == 1
    _nothing_leaked(collector.dsn)
