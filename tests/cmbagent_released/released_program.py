"""``python released_program.py WORKFLOW WORK_DIR``: the released CMBAgent's real ``WORKFLOW``
(``planning_and_control_context_carryover`` or ``one_shot``) run as a user would, with zero
code (the startup hook captures it when ``CMBAGENT_COLLECTOR_URL`` is set), offline with the
scripted model; prints the scripted model's ledger as JSON on its last line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import cmbagent

sys.path.append(str(Path(__file__).resolve().parents[2]))  # after the installed agent_shim
from tests.helpers.cmbagent_script import scripted_openai  # noqa: E402

TASK = "Compute the three quantities of the toy cosmology task"
WORKFLOWS = {
    "planning_and_control_context_carryover": {"max_plan_steps": 3, "n_plan_reviews": 1},
    "one_shot": {},
}


def main(workflow: str, work_dir: str) -> None:
    os.chdir(work_dir)  # AG2's cache (cache_seed=42) lives in .cache here: fresh for each run
    with scripted_openai() as ledger:
        getattr(cmbagent, workflow)(TASK, work_dir=os.path.join(work_dir, "work"),
                                    api_keys={"OPENAI": "offline"}, **WORKFLOWS[workflow])
    print(json.dumps({"calls": ledger.calls, "cost": ledger.cost()}))


if __name__ == "__main__":
    main(*sys.argv[1:])
