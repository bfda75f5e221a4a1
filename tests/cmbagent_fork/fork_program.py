"""``python fork_program.py WORK_DIR [--callbacks]``: the fork's real HITL workflow (its
``WorkflowExecutor`` with the ``hitl_planning`` and ``hitl_control`` phases, as
``hitl_interactive_workflow`` builds them, reviewing after each step with ``max_redos=1``), run as
a user would with zero code (the startup hook captures it when ``CMBAGENT_COLLECTOR_URL`` is set),
offline: the scripted model, and a scripted human who approves the plan, asks for step 2 to be
redone with feedback, then for once more (past ``max_redos``: the fork accepts the step). With
``--callbacks``, ``tracking_callbacks()`` is given to the fork too. Prints the scripted model's
ledger as JSON on its last line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from cmbagent.callbacks import WorkflowCallbacks, merge_callbacks
from cmbagent.workflows.composer import WorkflowDefinition, WorkflowExecutor

from agent_shim.cmbagent import tracking_callbacks

sys.path.append(str(Path(__file__).resolve().parents[2]))  # after the installed agent_shim
from tests.helpers.cmbagent_script import ScriptedHuman, scripted_openai  # noqa: E402

TASK = "Compute the three quantities of the toy cosmology task"
WORKFLOW = "hitl_interactive_custom"
FEEDBACK = "The fit ignores the covariance; use the full matrix."
MAX_REDOS = 1


def human() -> ScriptedHuman:
    return ScriptedHuman(("approve", None), ("continue", None), ("redo", FEEDBACK),
                         ("redo", "again"), ("continue", None))


def main(work_dir: str, *options: str) -> None:
    os.chdir(work_dir)  # AG2's cache (cache_seed=42) lives in .cache here: fresh for each run
    callbacks = None
    if "--callbacks" in options:
        tracking = tracking_callbacks(max_redos=MAX_REDOS)
        callbacks = merge_callbacks(WorkflowCallbacks(**tracking.callbacks()))
    workflow = WorkflowDefinition(
        id=WORKFLOW, name="HITL", description="planning, then each step reviewed",
        phases=[{"type": "hitl_planning", "config": {"max_plan_steps": 3, "n_plan_reviews": 1,
                                                     "require_explicit_approval": True}},
                {"type": "hitl_control", "config": {"approval_mode": "after_step",
                                                    "max_redos": MAX_REDOS}}])
    with scripted_openai() as ledger:
        WorkflowExecutor(workflow=workflow, task=TASK, work_dir=os.path.join(work_dir, "work"),
                         api_keys={"OPENAI": "offline"}, callbacks=callbacks,
                         approval_manager=human()).run_sync()
    print(json.dumps({"calls": ledger.calls, "cost": ledger.cost()}))


if __name__ == "__main__":
    main(*sys.argv[1:])
