"""The fork's real HITL workflow run as a user would (zero code: the startup hook), offline with
the scripted model and a scripted human who asks for one redo of step 2 with feedback, then for
one more past ``max_redos`` (``fork_program.py``), into a real collector and PostgreSQL; once
more with ``tracking_callbacks()`` given to the fork too: nothing is recorded twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fork_program import FEEDBACK, MAX_REDOS, TASK, WORKFLOW

from tests.helpers.cmbagent_workflows import (
    ENGINEERING,
    GROUP_CHAT,
    PLANNING,
    attempts,
    check_run_and_ledger,
    run_program,
    tree,
)
from tests.helpers.support import CollectorProcess, fetch

PROGRAM = Path(__file__).with_name("fork_program.py")
STEPS = [("hitl_planning", "phase", "completed"), ("hitl_control", "phase", "completed"),
         ("step_1", "step", "completed"), ("step_2", "step", "completed"),
         ("step_2_redo_1", "branch_point", "completed"),
         ("step_2_retry_1", "step", "completed"), ("step_3", "step", "completed")]


def _check_the_redo_and_its_refusal(dsn: str) -> None:
    branch = fetch(dsn, "SELECT id, meta FROM dag_nodes WHERE node_type = 'branch_point'")
    assert [json.loads(r[1])["hypothesis"] for r in branch] == [FEEDBACK]
    edges = fetch(dsn, "SELECT s.name, e.dependency_type, e.condition FROM dag_edges e "
                       "JOIN dag_nodes s ON s.id = e.from_node_id WHERE e.to_node_id = $1",
                  branch[0][0])
    assert [tuple(e) for e in edges] == [("step_2", "conditional", "redo_1")]
    refused = fetch(dsn, "SELECT inputs, meta FROM execution_events "
                         "WHERE event_subtype = 'max_redos_reached'")
    assert [(json.loads(r[0])["hypothesis"], json.loads(r[1])["redo"],
             json.loads(r[1])["max_redos"]) for r in refused] == [("again", 2, MAX_REDOS)]
    # Each execution of step 2 is its own node with its own attempt.
    assert attempts(dsn) == [("step_1", 1, "completed"), ("step_2", 1, "completed"),
                             ("step_2_retry_1", 1, "completed"), ("step_3", 1, "completed")]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("callbacks", [False, True], ids=["zero-code", "with-callbacks"])
def test_the_hitl_workflow_with_a_redo(collector: CollectorProcess, agent_env: dict[str, str],
                                       tmp_path: Path, callbacks: bool) -> None:
    options = ["--callbacks"] if callbacks else []
    ledger = run_program(PROGRAM, [str(tmp_path), *options], collector, agent_env)
    dsn = collector.dsn
    assert dsn is not None
    check_run_and_ledger(dsn, TASK, WORKFLOW, ledger)
    nodes, agents = tree(dsn)
    assert nodes == STEPS
    starter = {"control_starter"}
    assert agents == {"hitl_planning": PLANNING | GROUP_CHAT,
                      "step_1": ENGINEERING | GROUP_CHAT,
                      "step_2": ENGINEERING | starter | GROUP_CHAT,
                      "step_2_retry_1": ENGINEERING | starter | GROUP_CHAT,
                      "step_3": ENGINEERING | starter | GROUP_CHAT}
    _check_the_redo_and_its_refusal(dsn)
    reports = fetch(dsn, "SELECT count(*) FROM execution_events WHERE event_type = 'callback'")
    assert (reports[0][0] > 0) == callbacks
