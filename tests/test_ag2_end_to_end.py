"""Unmodified AG2 programs, captured through the startup hook and checked in the database."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers.install_checks import require_startup_hook
from .helpers.support import CollectorProcess, cost_rows, event_rows, fetch, wait_for

AG2_TESTS = Path(__file__).parent / "ag2"
sys.path.insert(0, str(AG2_TESTS))

import ag2_checks  # noqa: E402
import scenarios  # noqa: E402


@pytest.mark.parametrize("name", list(scenarios.SCENARIOS))
def test_unmodified_program_is_captured_into_the_database(
        name: str, collector: CollectorProcess, agent_env: dict[str, str], tmp_path: Path) -> None:
    require_startup_hook()
    env = {**agent_env, "CMBAGENT_COLLECTOR_URL": collector.url}
    # The program imports nothing of ours: the installed startup hook does it all.
    result = subprocess.run([sys.executable, str(AG2_TESTS / "scenarios.py"), name],
                            env={**__import__("os").environ, **env}, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    expected = json.loads(result.stdout.strip().splitlines()[-1])
    total = sum(expected["counts"].values())
    wait_for(lambda: len(event_rows(collector.dsn)) >= total)

    events, costs = event_rows(collector.dsn), cost_rows(collector.dsn)
    problems = ag2_checks.check_capture(
        events, costs, counts=expected["counts"], usage=expected["usage"],
        secret=scenarios.SECRET, failed=expected["failed"], terminations=expected["terminations"])
    assert problems == []
    # One implicit run and one session for the whole program.
    assert len(fetch(collector.dsn, "SELECT id FROM workflow_runs")) == 1
    assert len(fetch(collector.dsn, "SELECT id FROM sessions")) == 1
    everything = fetch(collector.dsn, "SELECT (SELECT string_agg(t::text, '') FROM "
                       "execution_events t) || (SELECT string_agg(c::text, '') FROM cost_records c)"
                       " || coalesce((SELECT string_agg(q::text, '') FROM quarantine q), '')")
    assert scenarios.SECRET not in everything[0][0]
    assert fetch(collector.dsn, "SELECT count(*) FROM quarantine")[0][0] == 0
