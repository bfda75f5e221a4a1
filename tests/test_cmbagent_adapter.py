"""The CMBAgent adapter: every WorkflowCallbacks callback with CMBAgent's argument shapes."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import pytest

from agent_shim import DisabledTracker
from agent_shim.cmbagent import CALLBACKS, MaxRedosExceeded, WorkflowError, tracking_callbacks
from agent_shim.config import ShimSettings
from agent_shim.context import CURRENT
from agent_shim.records import moment
from agent_shim.testing import RecordingSink, recording_tracker


# CMBAgent's own types (cmbagent/callbacks.py), reproduced: the adapter reads them by attribute.
class StepStatus(Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass
class StepInfo:
    step_number: int
    goal: str
    description: str
    status: StepStatus = StepStatus.PENDING
    started_at: float | None = None
    completed_at: float | None = None
    execution_time: float | None = None
    error: str | None = None
    result: dict[str, Any] | None = None
    summary: str | None = None


@dataclass
class PlanInfo:
    task: str
    num_steps: int
    steps: list[dict[str, Any]]
    plan_text: str
    planning_time: float


@dataclass
class WorkflowCallbacks:
    """The fields of CMBAgent's WorkflowCallbacks (all optional callables)."""

    on_planning_start: Callable[..., Any] | None = None
    on_planning_complete: Callable[..., Any] | None = None
    on_step_start: Callable[..., Any] | None = None
    on_step_complete: Callable[..., Any] | None = None
    on_step_failed: Callable[..., Any] | None = None
    on_workflow_start: Callable[..., Any] | None = None
    on_workflow_complete: Callable[..., Any] | None = None
    on_workflow_failed: Callable[..., Any] | None = None
    on_progress: Callable[..., Any] | None = None
    on_agent_start: Callable[..., Any] | None = None
    on_agent_complete: Callable[..., Any] | None = None
    should_continue: Callable[..., Any] | None = None
    on_pause_check: Callable[..., Any] | None = None
    on_cost_update: Callable[..., Any] | None = None
    on_agent_message: Callable[..., Any] | None = None
    on_code_execution: Callable[..., Any] | None = None
    on_tool_call: Callable[..., Any] | None = None
    on_phase_change: Callable[..., Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def merge_callbacks(*callbacks: Any) -> WorkflowCallbacks:
    """CMBAgent's merge_callbacks, reduced to how it reaches each handler."""

    def merged(name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            results = [getattr(cb, name)(*args, **kwargs) for cb in callbacks
                       if getattr(cb, name, None)]
            return all(results) if name == "should_continue" else None
        return call

    return WorkflowCallbacks(**{name: merged(name) for name in CALLBACKS})


pytestmark = pytest.mark.usefixtures("own_scope")

PLAN = [{"sub_task": "Generate data", "sub_task_agent": "engineer", "bullet_points": ["a"]},
        {"sub_task": "Fit", "sub_task_agent": "engineer", "bullet_points": ["b"]},
        {"sub_task": "Report", "sub_task_agent": "researcher", "bullet_points": ["c"]}]


def _drive(cb: WorkflowCallbacks, tracker: Any, redo: Callable[..., Any]) -> None:
    """CMBAgent's planning_and_control lifecycle (cmbagent-tracking.md §3.3) plus a redo."""
    cb.on_workflow_start("Fit H0", {"mode": "planning_and_control"})
    cb.on_phase_change("planning", 0)
    cb.on_phase_change("planning", None)
    assert cb.should_continue() is True
    cb.on_pause_check()
    cb.on_planning_start("Fit H0", {"planner_model": "gpt-4o", "plan_reviewer_model": "o3",
                                    "max_plan_steps": 3, "n_plan_reviews": 1})
    tracker.event("message", agent_name="planner")
    cb.on_cost_update({"cost_json_path": "/tmp/cost.json", "total_cost": 0.01,
                       "total_tokens": 1200, "records": [{"Agent": "planner", "Model": "gpt-4o",
                                                          "Cost ($)": 0.01}]})
    cb.on_planning_complete(PlanInfo("Fit H0", 3, PLAN, "1. ...", 1.5))
    cb.on_phase_change("control", 1)
    cb.on_phase_change("control", None)
    for number in (1, 2):
        cb.on_phase_change("control", number)
        cb.on_step_start(StepInfo(number, PLAN[number - 1]["sub_task"],
                                  PLAN[number - 1]["sub_task"], StepStatus.RUNNING, 1.0))
        cb.on_agent_start("engineer", number)
        tracker.event("message", agent_name="engineer")
        cb.on_agent_message("engineer", "assistant", "```python\nprint(1)\n```", {"step": number})
        cb.on_code_execution("engineer", "print(1)", "python", None)
        cb.on_tool_call("researcher", "search", {"q": "H0"}, {"hits": 3})
        cb.on_progress("halfway", {"step": number, "percent": 50})
        cb.on_agent_complete("engineer", number, {"ok": True})
    cb.on_step_failed(StepInfo(2, "Step 2", "", StepStatus.FAILED, error="fit diverged"))
    redo(2, 1, "use a wider prior")
    tracker.event("message", agent_name="engineer")
    cb.on_step_complete(StepInfo(2, "Step completed", "Step completed", StepStatus.COMPLETED,
                                 completed_at=2.0, summary="H0 = 70"))
    cb.on_step_complete(StepInfo(3, "Report", "Report", StepStatus.SKIPPED,
                                 error="skipped by the reviewer"))
    cb.on_workflow_complete({"final": "ok"}, 12.5)


@pytest.fixture
def recorded() -> tuple[RecordingSink, Any]:
    tracker, sink = recording_tracker()
    tracking = tracking_callbacks(tracker, max_redos=1)
    _drive(merge_callbacks(tracking), tracker, tracking.create_redo_branch)
    return sink, tracking


def test_every_callback_is_there_with_its_signature() -> None:
    tracking = tracking_callbacks(DisabledTracker())
    names = {f.name for f in dataclasses.fields(WorkflowCallbacks)} - {"extra"}
    assert set(CALLBACKS) == names
    assert set(WorkflowCallbacks(**tracking.callbacks()).__dict__) >= names
    assert all(callable(getattr(tracking, name)) for name in CALLBACKS)


def test_the_lifecycle_becomes_one_run_with_phases_steps_and_a_redo(recorded) -> None:
    sink, tracking = recorded
    runs = sink.of("run")
    assert [(moment(r), r["status"]) for r in runs] == [("start", "running"), ("end", "completed")]
    assert runs[0]["task_description"] == "Fit H0"
    assert len({s["id"] for s in sink.of("session")}) == 1
    assert tracking.run_id.bytes == runs[0]["id"]
    starts = sink.of("node", moment="start")
    assert [(n["name"], n["node_type"]) for n in starts if n["depth"] == 0] == [
        ("planning", "phase"), ("control", "phase"), ("step_1", "step"), ("step_2", "step"),
        ("step_2_retry_1", "step"), ("step_3", "step")]
    by_id = {n["id"]: n for n in [*starts, *sink.of("node", moment="point")] if n["name"]}
    ends = {n["id"]: n for n in sink.of("node", moment="end")}
    status = {by_id[i]["name"]: e["status"] for i, e in ends.items()
              if by_id[i]["node_type"] != "sub_agent"}
    assert status == {"planning": "completed", "control": "completed", "step_1": "completed",
                      "step_2": "failed", "step_2_retry_1": "completed", "step_3": "skipped"}
    step2 = next(n for n in starts if n["name"] == "step_2")
    assert ends[step2["id"]]["error_message"] == "fit diverged"
    assert step2["meta"] == {"step": 2, "goal": "Fit", "phase": "control", "description": "Fit"}
    branch = next(n for n in sink.of("node", moment="point") if n["node_type"] == "branch_point")
    assert branch["meta"]["branch_name"] == "redo_1"
    assert branch["meta"]["hypothesis"] == "use a wider prior"
    assert (step2["id"], branch["id"], "conditional", "redo_1") in [
        (e["from_node_id"], e["to_node_id"], e["dependency_type"], e["condition"])
        for e in sink.of("edge")]
    planning = next(n for n in starts if n["name"] == "planning")
    assert ends[planning["id"]]["meta"] == {"num_steps": 3, "planning_time": 1.5}
    retry = next(n for n in starts if n["name"] == "step_2_retry_1")
    assert ends[retry["id"]]["meta"]["summary"] == "H0 = 70"
    assert CURRENT.get() is None


def test_agent_activity_and_reports_land_on_sub_agent_nodes(recorded) -> None:
    sink, _ = recorded
    nodes = {n["id"]: n for n in sink.of("node", moment="start")}
    placed = [(e["event_type"], e.get("event_subtype"), nodes[e["node_id"]]["name"],
               nodes[nodes[e["node_id"]]["parent_node_id"]]["name"])
              for e in sink.of("event", moment="point") if e.get("agent_name")]
    assert placed == [
        ("message", None, "planner", "planning"),
        *[item for step in ("step_1", "step_2") for item in (
            ("callback", "agent_start", "engineer", step), ("message", None, "engineer", step),
            ("callback", "agent_message", "engineer", step),
            ("callback", "code_execution", "engineer", step),
            ("callback", "tool_call", "researcher", step),
            ("callback", "agent_complete", "engineer", step))],
        ("message", None, "engineer", "step_2_retry_1")]
    workflow = [(e["event_subtype"], e["status"])
                for e in sink.of("event", moment="point", event_type="workflow")]
    assert workflow == [("workflow_start", "completed"), ("planning_start", "completed"),
                        ("plan", "completed"), ("redo_requested", "completed"),
                        ("step_skipped", "skipped"), ("workflow_complete", "completed")]
    reports = [e["event_subtype"] for e in sink.of("event", event_type="callback")
               if not e.get("agent_name")]
    assert reports == ["cost_update", "progress", "progress"]
    assert sink.of("cost") == []  # CMBAgent's cost summary is an event; LLM calls make costs


def test_past_max_redos_is_a_clear_error_and_is_recorded() -> None:
    tracker, sink = recording_tracker()
    tracking = tracking_callbacks(tracker, max_redos=1)
    tracking.on_step_start(StepInfo(4, "fit", "fit"))
    tracking.on_step_failed(StepInfo(4, "Step 4", "", StepStatus.FAILED, error="bad"))
    tracking.create_redo_branch(4, 1, "first idea")
    with pytest.raises(MaxRedosExceeded) as refused:
        tracking.create_redo_branch(4, 2, "second idea")
    assert str(refused.value).startswith("step 4: redo 2 exceeds max_redos=1. Accept")
    tracking.on_step_complete(StepInfo(4, "fit", "fit", StepStatus.COMPLETED))
    event = sink.of("event", event_subtype="max_redos_reached")[0]
    assert event["status"] == "failed" and event["inputs"] == {"hypothesis": "second idea"}
    retry = sink.of("node", moment="start", name="step_4_retry_1")[0]
    assert event["node_id"] == retry["id"]
    assert [n["meta"]["forced_acceptance"]
            for n in sink.of("node", moment="point", id=retry["id"])] \
        == [True]
    assert [n["status"] for n in sink.of("node", moment="end", id=retry["id"])] == ["completed"]
    with pytest.raises(WorkflowError, match="step 7 has not run"):
        tracking.create_redo_branch(7, 1, "never started")
    with pytest.raises(ValueError, match="max_redos must be a non-negative integer"):
        tracking_callbacks(tracker, max_redos=-1)


def test_without_a_workflow_start_the_current_run_is_used() -> None:
    tracker, sink = recording_tracker()
    with tracker.run("backend task") as run:
        tracking = tracking_callbacks(tracker)
        tracking.on_phase_change("control", None)
        tracking.on_step_start(StepInfo(1, "g", "g"))
        tracker.event("message", agent_name="engineer")
        tracking.on_step_complete(StepInfo(1, "g", "g", StepStatus.COMPLETED))
        assert tracking.run_id == run.uuid
    assert len(sink.of("run", moment="start")) == 1
    assert len({s["id"] for s in sink.of("session")}) == 1
    assert {n["run_id"] for n in sink.of("node")} == {run.id}
    # The phase CMBAgent never closes is closed with the run.
    assert len(sink.of("node", moment="end")) == 3


def test_callbacks_never_raise_into_cmbagent(caplog: pytest.LogCaptureFixture) -> None:
    tracker, sink = recording_tracker()
    tracking = tracking_callbacks(tracker)
    with caplog.at_level(logging.WARNING, logger="agent_shim.cmbagent"):
        tracking.on_step_start(object())  # no step_number
        tracking.on_planning_complete(None)
    assert "on_step_start could not be recorded" in caplog.text


def test_capture_off_callbacks_do_nothing_but_max_redos_still_holds() -> None:
    tracking = tracking_callbacks(DisabledTracker(), max_redos=1)
    _drive(merge_callbacks(tracking), DisabledTracker(), tracking.create_redo_branch)
    assert tracking.create_redo_branch(2, 1, "h") is None
    with pytest.raises(MaxRedosExceeded):
        tracking.create_redo_branch(2, 2, "h")
    assert tracking.run_id is None and CURRENT.get() is None


def _fork_control_phase(cb: WorkflowCallbacks, tracker: Any) -> None:
    """The fork's control phase as its PhaseExecutionManager reports it: the phase and each step
    announced, no callback when the phase or the workflow ends, and the chat history replayed
    with ``msg.get("name", msg.get("role"))`` as the agent."""
    cb.on_phase_change("control", None)
    for number in (1, 2):
        cb.on_phase_change("control", number)
        cb.on_step_start(StepInfo(number, f"goal {number}", f"goal {number}", StepStatus.RUNNING))
        tracker.event("message", agent_name="engineer")
        cb.on_agent_message("engineer", "assistant", "named", {"step": number})
        cb.on_agent_message("assistant", "assistant", "unnamed", {"step": number})
        cb.on_agent_message("user", "user", "the task", {"step": number})
        cb.on_code_execution("assistant", "print(1)", "python", None)
        cb.on_step_complete(StepInfo(number, "done", "done", StepStatus.COMPLETED))


def test_what_the_fork_leaves_open_closes_with_the_implicit_run() -> None:
    tracker, sink = recording_tracker()
    _fork_control_phase(merge_callbacks(tracking_callbacks(tracker)), tracker)
    control = sink.of("node", moment="start", name="control")[0]
    assert sink.of("node", moment="end", id=control["id"]) == []  # the fork never said it ended
    tracker.shutdown(0)
    assert [n["status"] for n in sink.of("node", moment="end", id=control["id"])] == ["completed"]
    assert [r["status"] for r in sink.of("run", moment="end")] == ["completed"]
    starts = {n["id"] for n in sink.of("node", moment="start")}
    assert starts == {n["id"] for n in sink.of("node", moment="end")}  # every node closed, once
    assert len(sink.of("node", moment="end")) == len(starts)


def test_unnamed_messages_stay_on_the_step_not_a_pseudo_agent() -> None:
    tracker, sink = recording_tracker()
    with tracker.run("fit"):
        _fork_control_phase(merge_callbacks(tracking_callbacks(tracker)), tracker)
    agents = [(n["name"], n["depth"])
              for n in sink.of("node", moment="start", node_type="sub_agent")]
    assert agents == [("engineer", 1), ("engineer", 1)]  # one per step; no assistant, no user
    steps = {n["id"]: n["name"] for n in sink.of("node", moment="start", node_type="step")}
    unnamed = [e for e in sink.of("event", event_type="callback") if e["agent_name"] is None]
    assert [(e["event_subtype"], e["inputs"].get("role"), steps[e["node_id"]])
            for e in unnamed] == [
        (subtype, role, step) for step in ("step_1", "step_2")
        for subtype, role in (("agent_message", "assistant"), ("agent_message", "user"),
                              ("code_execution", None))]


@pytest.mark.parametrize("outcome", ["completed", "failed"])
def test_the_session_a_run_opened_ends_with_the_run(outcome: str) -> None:
    tracker, sink = recording_tracker()
    with pytest.raises(RuntimeError) if outcome == "failed" else nullcontext():
        with tracker.run("fit") as run:
            with tracker.run("nested") as nested:  # same session: it does not end it
                assert nested.session_id == run.session_id
            assert [s["status"] for s in sink.of("session")] == ["active"]
            if outcome == "failed":
                raise RuntimeError("diverged")
    assert [(s["id"], s["status"]) for s in sink.of("session")] == [
        (run.session_id, "active"), (run.session_id, outcome)]


def test_the_implicit_session_ends_at_exit_unless_it_was_given() -> None:
    tracker, sink = recording_tracker()
    tracker.event("message", agent_name="engineer")
    tracker.shutdown(0)
    assert [s["status"] for s in sink.of("session")] == ["active", "completed"]
    given = ShimSettings(collector_urls=("inproc://recording",), session_id=b"s" * 16)
    tracker, sink = recording_tracker(given)
    tracker.event("message", agent_name="engineer")
    tracker.shutdown(0)
    assert sink.of("session") == [] and len(sink.of("run", moment="end")) == 1
