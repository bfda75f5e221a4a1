"""Zero-code capture on the fork's own phase machinery: ``PhaseExecutionManager`` for a planning
and a HITL control phase, fresh ``CMBAgent()`` attempts, and the HITL step review with a scripted
human who asks for one redo of step 2 with feedback (the fork's real ``_request_step_review``).
The model is never reached: the agents' own AG2 activity is stood in for by tracker events."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import cmbagent
import pytest
from cmbagent.callbacks import WorkflowCallbacks, merge_callbacks
from cmbagent.cmbagent import CMBAgent
from cmbagent.phases.base import PhaseContext
from cmbagent.phases.execution_manager import PhaseExecutionManager
from cmbagent.phases.hitl_control import HITLControlPhase, HITLControlPhaseConfig
from cmbagent.phases.planning import PlanningPhase

from agent_shim.cmbagent import tracking_callbacks
from agent_shim.records import moment
from tests.helpers.cmbagent_script import ScriptedHuman

#: The fork's own agents warn so each time a CMBAgent() builds them.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Update function string contains no variables:UserWarning")

FEEDBACK = "The fit ignores the covariance; use the full matrix."


def _context(tmp_path: Path, callbacks: Any) -> PhaseContext:
    return PhaseContext(workflow_id="wf", run_id="run", phase_id="phase", task="Fit H0",
                        work_dir=str(tmp_path), callbacks=callbacks)


def _workflow(tracker: Any, tmp_path: Path, callbacks: Any = None, attempts: bool = True) -> None:
    """The fork's planning and HITL control phases as they call the manager, step by step; with
    ``attempts``, step 2 builds a fresh CMBAgent() per attempt as the fork does (its first
    attempt fails, the second fixes it; the redo's attempt follows)."""
    context = _context(tmp_path, callbacks)
    planning = PhaseExecutionManager(context, PlanningPhase())
    planning.start()
    tracker.event("message", agent_name="planner")
    planning.complete()

    phase = HITLControlPhase(HITLControlPhaseConfig(max_redos=1, approval_mode="after_step"))
    human = ScriptedHuman(("redo", FEEDBACK), ("redo", "again"))
    control = PhaseExecutionManager(context, phase)
    control.start()
    for step in (1, 2, 3):
        control.start_step(step, f"goal {step}")
        for _ in range(2 if attempts and step == 2 else 0):
            _fresh_cmbagent(tmp_path)
        tracker.event("message", agent_name="engineer")
        if callbacks is not None:
            callbacks.invoke_agent_message("assistant", "assistant", "unnamed", {"step": step})
        if step == 2:  # redo 1 is granted and run; redo 2 is past max_redos=1: accepted
            asyncio.run(phase._request_step_review(human, context, {}, step, {}, control))
            if attempts:
                _fresh_cmbagent(tmp_path)
            tracker.event("message", agent_name="engineer")
            asyncio.run(phase._request_step_review(human, context, {}, step, {}, control))
        control.complete_step(step, f"step {step} done")
    control.complete()


def _fresh_cmbagent(tmp_path: Path) -> None:
    CMBAgent(work_dir=str(tmp_path / "work"), api_keys={"OPENAI": "offline"})


def _tree(sink: Any) -> tuple[dict[bytes, dict[str, Any]], dict[bytes, str]]:
    named = [n for n in [*sink.of("node", moment="start"), *sink.of("node", moment="point")]
             if n["name"]]
    starts = {n["id"]: n for n in sorted(named, key=lambda n: (n["depth"], n["order_index"]))}
    ends = {n["id"]: n["status"] for n in sink.of("node", moment="end")}
    return starts, ends


def test_phases_steps_attempts_and_a_redo_with_zero_code(capture, tmp_path: Path) -> None:
    tracker, sink = capture
    with tracker.run("Fit H0"):
        _workflow(tracker, tmp_path)
    starts, ends = _tree(sink)
    top = [(n["name"], n["node_type"], ends.get(i)) for i, n in starts.items() if n["depth"] == 0]
    assert top == [("planning", "phase", "completed"), ("hitl_control", "phase", "completed"),
                   ("step_1", "step", "completed"), ("step_2", "step", "completed"),
                   ("step_2_redo_1", "branch_point", None),
                   ("step_2_retry_1", "step", "completed"), ("step_3", "step", "completed")]
    branch = next(n for n in starts.values() if n["node_type"] == "branch_point")
    assert branch["meta"]["hypothesis"] == FEEDBACK
    edges = {(e["from_node_id"], e["to_node_id"]): (e["dependency_type"], e["condition"])
             for e in sink.of("edge")}
    step2 = next(i for i, n in starts.items() if n["name"] == "step_2")
    assert edges[(step2, branch["id"])] == ("conditional", "redo_1")
    refused = sink.of("event", event_subtype="max_redos_reached")
    assert [(e["meta"]["redo"], e["inputs"]["hypothesis"]) for e in refused] == [(2, "again")]

    ended = {e["id"]: e["status"] for e in sink.of("event", moment="end")}
    by_step = [(starts[e["node_id"]]["name"], e["meta"]["attempt"], ended[e["id"]])
               for e in sink.of("event", moment="start", event_type="workflow",
                                event_subtype="attempt")]
    assert by_step == [("step_2", 1, "failed"), ("step_2", 2, "completed"),
                       ("step_2_retry_1", 1, "completed")]
    agents = {(starts[n["parent_node_id"]]["name"], n["name"])
              for n in sink.of("node", moment="start", node_type="sub_agent")}
    assert agents == {("planning", "planner"), ("step_1", "engineer"), ("step_2", "engineer"),
                      ("step_2_retry_1", "engineer"), ("step_3", "engineer")}
    assert set(ends) >= {i for i, n in starts.items() if n["node_type"] != "branch_point"}


def test_with_tracking_callbacks_too_nothing_is_recorded_twice(capture, tmp_path: Path) -> None:
    tracker, sink = capture
    tracking = tracking_callbacks(tracker)
    callbacks = merge_callbacks(WorkflowCallbacks(**tracking.callbacks()))
    with tracker.run("Fit H0"):
        _workflow(tracker, tmp_path, callbacks, attempts=False)
    starts, _ = _tree(sink)
    names = [n["name"] for n in starts.values() if n["depth"] == 0]
    assert names == ["planning", "hitl_control", "step_1", "step_2", "step_2_redo_1",
                     "step_2_retry_1", "step_3"]
    assert "assistant" not in {n["name"] for n in starts.values()}
    reports = sink.of("event", event_type="callback", event_subtype="agent_message")
    assert [starts[e["node_id"]]["name"] for e in reports] == ["step_1", "step_2", "step_3"]


def test_an_entry_point_is_the_run_with_its_task_closed_when_it_raises(capture,
                                                                        tmp_path: Path) -> None:
    tracker, sink = capture
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    with pytest.raises(FileExistsError):  # the fork's one_shot makes its work_dir first
        cmbagent.one_shot("Plot a sine", work_dir=str(not_a_directory))
    runs = sink.of("run")
    assert [(moment(r), r["status"]) for r in runs] == [("start", "running"), ("end", "failed")]
    assert runs[0]["task_description"] == "Plot a sine"
    assert runs[0]["meta"] == {"workflow": "one_shot"}
    assert "FileExistsError" in runs[1]["error_message"]


def test_importing_the_fork_in_a_captured_process_installs_the_capture(tmp_path: Path) -> None:
    program = ("import cmbagent\n"
               "from agent_shim import cmbagent_capture\n"
               "print(cmbagent_capture.records_structure(),"
               " hasattr(cmbagent.planning_and_control_context_carryover, '__wrapped__'))\n")
    env = {**os.environ, "CMBAGENT_COLLECTOR_URL": "tcp://127.0.0.1:9",
           "CMBAGENT_SPOOL_DIR": str(tmp_path), "CMBAGENT_EXIT_TIMEOUT": "0.1"}
    result = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-2:] == ["True", "True"]
