"""The released CMBAgent's real workflows, run as a user would (zero code: the startup hook),
offline with a scripted model at the OpenAI client (``tests/helpers/cmbagent_script.py``), into a
real collector and PostgreSQL: ``planning_and_control_context_carryover`` with a 3-step plan whose
step 2 fails once and is fixed, and ``one_shot``."""

from __future__ import annotations

from pathlib import Path

import pytest
from released_program import TASK

from tests.helpers.cmbagent_workflows import (
    ENGINEERING,
    GROUP_CHAT,
    PLANNING,
    attempts,
    check_run_and_ledger,
    executions,
    run_program,
    tree,
)
from tests.helpers.support import CollectorProcess

PROGRAM = Path(__file__).with_name("released_program.py")


@pytest.mark.timeout(600)
def test_planning_and_control_context_carryover_with_a_failed_step(
        collector: CollectorProcess, agent_env: dict[str, str], tmp_path: Path) -> None:
    workflow = "planning_and_control_context_carryover"
    ledger = run_program(PROGRAM, [workflow, str(tmp_path)], collector, agent_env)
    dsn = collector.dsn
    assert dsn is not None
    check_run_and_ledger(dsn, TASK, workflow, ledger)
    nodes, agents = tree(dsn)
    assert nodes == [("planning", "phase", "completed"), ("control", "phase", "completed"),
                     ("step_1", "step", "completed"), ("step_2", "step", "completed"),
                     ("step_3", "step", "completed")]
    starter = {"control_starter"}
    assert agents == {"planning": PLANNING | GROUP_CHAT,
                      "step_1": ENGINEERING | GROUP_CHAT,
                      "step_2": ENGINEERING | starter | GROUP_CHAT,
                      "step_3": ENGINEERING | starter | GROUP_CHAT}
    assert attempts(dsn) == [("step_1", 1, "completed"), ("step_2", 1, "failed"),
                             ("step_2", 2, "completed"), ("step_3", 1, "completed")]
    # The failed attempt is CMBAgent's own: its executor ran the code, which raised.
    assert executions(dsn) == [("step_1", "completed"), ("step_2", "failed"),
                               ("step_2", "completed"), ("step_3", "completed")]
    assert {c[0] for c in ledger["calls"]} == PLANNING | ENGINEERING - {
        "engineer_nest", "engineer_nested_chat", "executor"} | starter


@pytest.mark.timeout(600)
def test_one_shot_is_one_step_in_the_control_phase(
        collector: CollectorProcess, agent_env: dict[str, str], tmp_path: Path) -> None:
    ledger = run_program(PROGRAM, ["one_shot", str(tmp_path)], collector, agent_env)
    dsn = collector.dsn
    assert dsn is not None
    check_run_and_ledger(dsn, TASK, "one_shot", ledger)
    nodes, agents = tree(dsn)
    assert nodes == [("control", "phase", "completed"), ("step_1", "step", "completed")]
    assert agents == {"step_1": ENGINEERING | GROUP_CHAT}
    assert attempts(dsn) == [("step_1", 1, "completed")]
    assert executions(dsn) == [("step_1", "completed")]
