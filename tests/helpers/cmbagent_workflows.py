"""Running the real CMBAgent as a user would, into a real collector, and reading back what was
stored: shared by ``tests/cmbagent_released`` and ``tests/cmbagent_fork`` (each in its own
Python 3.12 virtualenv, see ``.ci/cmbagent-versions.sh``; their conftests take the main suite's
collector fixtures)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.helpers.support import CollectorProcess, fetch, wait_for

#: AG2's own agents in every CMBAgent group chat: the group's manager (CMBAgent names it), the
#: user proxy that sends the task, the tool executor.
GROUP_CHAT = {"main_cmbagent_chat", "_User", "_Group_Tool_Executor"}
PLANNING = {"plan_setter", "planner", "planner_response_formatter", "plan_recorder",
            "plan_reviewer", "reviewer_response_formatter", "review_recorder", "terminator"}
#: An engineer's step: its nested chat runs the formatter and the executor.
ENGINEERING = {"engineer", "engineer_nest", "engineer_nested_chat", "engineer_response_formatter",
               "executor", "executor_response_formatter", "control", "terminator"}


def run_program(program: Path, args: list[str], collector: CollectorProcess,
                agent_env: dict[str, str]) -> dict[str, Any]:
    """Runs a CMBAgent program with zero-code capture into ``collector``; returns the ledger it
    printed (its last line) once the collector stored its run and every LLM call."""
    env = {**os.environ, **agent_env, "CMBAGENT_COLLECTOR_URL": collector.url}
    result = subprocess.run([sys.executable, str(program), *args], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ledger: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    dsn = collector.dsn
    assert dsn is not None
    wait_for(lambda: fetch(dsn, "SELECT count(*) FROM workflow_runs "
                                "WHERE status <> 'running'")[0][0] >= 1
             and fetch(dsn, "SELECT count(*) FROM cost_records WHERE cost_usd > 0")[0][0]
             >= len(ledger["calls"]), timeout=60)
    return ledger


def check_run_and_ledger(dsn: str, task: str, workflow: str, ledger: dict[str, Any]) -> None:
    """One session and one run (no orphan run from the code-execution subprocesses), ended,
    with its task; tokens and cost equal to the ledger's; nothing quarantined or dropped;
    every node closed.

    A call AG2 answered from its cache (CMBAgent's ``cache_seed=42``: a redo asks some agents
    the very same thing again) never reached the model: it is recorded at no cost and is not
    in the ledger.
    """
    assert [r["status"] for r in fetch(dsn, "SELECT status FROM sessions")] == ["completed"]
    runs = fetch(dsn, "SELECT task_description, status, meta FROM workflow_runs")
    assert [(r[0], r[1], json.loads(r[2])) for r in runs] == [
        (task, "completed", {"workflow": workflow})]
    calls = ledger["calls"]
    billed = fetch(dsn, "SELECT count(*), sum(prompt_tokens), sum(completion_tokens), "
                        "sum(cost_usd) FROM cost_records WHERE cost_usd > 0")[0]
    assert tuple(billed) == (len(calls), sum(c[2] for c in calls), sum(c[3] for c in calls),
                             Decimal(str(round(ledger["cost"], 10))))
    cached = fetch(dsn, "SELECT count(*) FROM execution_events WHERE event_type = 'llm_call' "
                        "AND (meta->>'cache_hit')::boolean")[0][0]
    assert fetch(dsn, "SELECT count(*) FROM cost_records WHERE cost_usd = 0")[0][0] == cached
    assert fetch(dsn, "SELECT count(*) FROM quarantine")[0][0] == 0
    assert fetch(dsn, "SELECT count(*) FROM dropped_events")[0][0] == 0
    assert fetch(dsn, "SELECT name, node_type FROM dag_nodes WHERE status = 'running'") == []


def tree(dsn: str) -> tuple[list[tuple[str, str, str]], dict[str, set[str]]]:
    """The depth-0 nodes in order (name, type, status) and each one's sub-agents."""
    nodes = [(r[0], r[1], r[2]) for r in fetch(
        dsn, "SELECT name, node_type, status FROM dag_nodes WHERE depth = 0 "
             "ORDER BY order_index")]
    agents: dict[str, set[str]] = {}
    for parent, name in fetch(dsn, "SELECT p.name, n.name FROM dag_nodes n JOIN dag_nodes p "
                                   "ON p.id = n.parent_node_id WHERE n.node_type = 'sub_agent'"):
        agents.setdefault(parent, set()).add(name)
    return nodes, agents


def attempts(dsn: str) -> list[tuple[str, int, str]]:
    """Each attempt span: its step, its number, its status."""
    rows = fetch(dsn, "SELECT n.name, e.meta, e.status FROM execution_events e JOIN dag_nodes n "
                      "ON n.id = e.node_id WHERE e.event_type = 'workflow' "
                      "AND e.event_subtype = 'attempt' ORDER BY e.execution_order")
    return [(r[0], json.loads(r[1])["attempt"], r[2]) for r in rows]


def executions(dsn: str) -> list[tuple[str, str]]:
    """Each code execution: the step its agent worked in, its status."""
    return [(r[0], r[1]) for r in fetch(
        dsn, "SELECT s.name, e.status FROM execution_events e JOIN dag_nodes a "
             "ON a.id = e.node_id JOIN dag_nodes s ON s.id = a.parent_node_id "
             "WHERE e.event_type = 'code_exec' ORDER BY e.execution_order")]
