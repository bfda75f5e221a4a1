"""The released CMBAgent's real workflows, run as a user would (zero code: the startup hook),
offline with a scripted model at the OpenAI client (``scripted_openai``), into a real collector
and PostgreSQL: ``planning_and_control_context_carryover`` with a 3-step plan whose step 2 fails
once and is fixed, and ``one_shot``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from released_program import TASK

from tests.support import CollectorProcess, fetch, wait_for

PROGRAM = Path(__file__).with_name("released_program.py")
#: AG2's own agents in every CMBAgent group chat: the group's manager (CMBAgent names it), the
#: user proxy that sends the task, the tool executor, and the engineer's nested chat.
GROUP_CHAT = {"main_cmbagent_chat", "_User", "_Group_Tool_Executor"}
PLANNING = {"plan_setter", "planner", "planner_response_formatter", "plan_recorder",
            "plan_reviewer", "reviewer_response_formatter", "review_recorder", "terminator"}
#: The engineer's step: its nested chat runs the formatter and the executor.
ENGINEERING = {"engineer", "engineer_nest", "engineer_nested_chat", "engineer_response_formatter",
               "executor", "executor_response_formatter", "control", "terminator"}


def _run(workflow: str, collector: CollectorProcess, agent_env: dict[str, str],
         tmp_path: Path) -> dict[str, Any]:
    """Runs the workflow program; returns its ledger once the collector stored its run."""
    env = {**os.environ, **agent_env, "CMBAGENT_COLLECTOR_URL": collector.url}
    result = subprocess.run([sys.executable, str(PROGRAM), workflow, str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ledger: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    wait_for(lambda: fetch(collector.dsn, "SELECT count(*) FROM workflow_runs "
                           "WHERE status <> 'running'")[0][0] >= 1
             and fetch(collector.dsn, "SELECT count(*) FROM cost_records")[0][0]
             >= len(ledger["calls"]), timeout=60)
    return ledger


def _check_the_run_and_its_ledger(dsn: str, workflow: str, ledger: dict[str, Any]) -> None:
    """One session and one run (no orphan run from the code-execution subprocesses), ended,
    with its task; tokens and cost equal to the ledger's; nothing quarantined or dropped;
    every node closed."""
    assert [r["status"] for r in fetch(dsn, "SELECT status FROM sessions")] == ["completed"]
    runs = fetch(dsn, "SELECT task_description, status, meta FROM workflow_runs")
    assert [(r[0], r[1], json.loads(r[2])) for r in runs] == [
        (TASK, "completed", {"workflow": workflow})]
    calls = ledger["calls"]
    prompt, completion, cost = fetch(dsn, "SELECT sum(prompt_tokens), sum(completion_tokens), "
                                          "sum(cost_usd) FROM cost_records")[0]
    assert (prompt, completion) == (sum(c[2] for c in calls), sum(c[3] for c in calls))
    assert cost == Decimal(str(round(ledger["cost"], 10)))
    assert fetch(dsn, "SELECT count(*) FROM quarantine")[0][0] == 0
    assert fetch(dsn, "SELECT count(*) FROM dropped_events")[0][0] == 0
    assert fetch(dsn, "SELECT name, node_type FROM dag_nodes WHERE status = 'running'") == []


def _tree(dsn: str) -> tuple[list[tuple[str, str, str]], dict[str, set[str]]]:
    """The depth-0 nodes in order (name, type, status) and each one's sub-agents."""
    nodes = [(r[0], r[1], r[2]) for r in fetch(
        dsn, "SELECT name, node_type, status FROM dag_nodes WHERE depth = 0 "
             "ORDER BY order_index")]
    agents: dict[str, set[str]] = {}
    for parent, name in fetch(dsn, "SELECT p.name, n.name FROM dag_nodes n JOIN dag_nodes p "
                                   "ON p.id = n.parent_node_id WHERE n.node_type = 'sub_agent'"):
        agents.setdefault(parent, set()).add(name)
    return nodes, agents


def _attempts(dsn: str) -> list[tuple[str, int, str]]:
    """Each attempt span: its step, its number, its status."""
    rows = fetch(dsn, "SELECT n.name, e.meta, e.status FROM execution_events e JOIN dag_nodes n "
                      "ON n.id = e.node_id WHERE e.event_type = 'workflow' "
                      "AND e.event_subtype = 'attempt' ORDER BY e.execution_order")
    return [(r[0], json.loads(r[1])["attempt"], r[2]) for r in rows]


def _executions(dsn: str) -> list[tuple[str, str]]:
    """Each code execution: the step its agent worked in, its status."""
    return [(r[0], r[1]) for r in fetch(
        dsn, "SELECT s.name, e.status FROM execution_events e JOIN dag_nodes a "
             "ON a.id = e.node_id JOIN dag_nodes s ON s.id = a.parent_node_id "
             "WHERE e.event_type = 'code_exec' ORDER BY e.execution_order")]


@pytest.mark.timeout(600)
def test_planning_and_control_context_carryover_with_a_failed_step(
        collector: CollectorProcess, agent_env: dict[str, str], tmp_path: Path) -> None:
    workflow = "planning_and_control_context_carryover"
    ledger = _run(workflow, collector, agent_env, tmp_path)
    dsn = collector.dsn
    assert dsn is not None
    _check_the_run_and_its_ledger(dsn, workflow, ledger)
    nodes, agents = _tree(dsn)
    assert nodes == [("planning", "phase", "completed"), ("control", "phase", "completed"),
                     ("step_1", "step", "completed"), ("step_2", "step", "completed"),
                     ("step_3", "step", "completed")]
    starter = {"control_starter"}
    assert agents == {"planning": PLANNING | GROUP_CHAT,
                      "step_1": ENGINEERING | GROUP_CHAT,
                      "step_2": ENGINEERING | starter | GROUP_CHAT,
                      "step_3": ENGINEERING | starter | GROUP_CHAT}
    assert _attempts(dsn) == [("step_1", 1, "completed"), ("step_2", 1, "failed"),
                              ("step_2", 2, "completed"), ("step_3", 1, "completed")]
    # The failed attempt is CMBAgent's own: its executor ran the code, which raised.
    assert _executions(dsn) == [("step_1", "completed"), ("step_2", "failed"),
                                ("step_2", "completed"), ("step_3", "completed")]
    assert {c[0] for c in ledger["calls"]} == PLANNING | ENGINEERING - {
        "engineer_nest", "engineer_nested_chat", "executor"} | starter


@pytest.mark.timeout(600)
def test_one_shot_is_one_step_in_the_control_phase(
        collector: CollectorProcess, agent_env: dict[str, str], tmp_path: Path) -> None:
    ledger = _run("one_shot", collector, agent_env, tmp_path)
    dsn = collector.dsn
    assert dsn is not None
    _check_the_run_and_its_ledger(dsn, "one_shot", ledger)
    nodes, agents = _tree(dsn)
    assert nodes == [("control", "phase", "completed"), ("step_1", "step", "completed")]
    assert agents == {"step_1": ENGINEERING | GROUP_CHAT}
    assert _attempts(dsn) == [("step_1", 1, "completed")]
    assert _executions(dsn) == [("step_1", "completed")]
