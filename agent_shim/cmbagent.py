"""CMBAgent's ``WorkflowCallbacks``, recorded into the workflow model (``agent_shim.workflow``).

::

    from cmbagent.callbacks import merge_callbacks
    from agent_shim.cmbagent import tracking_callbacks

    tracking = tracking_callbacks(max_redos=2)
    callbacks = merge_callbacks(websocket_callbacks, tracking)
    ...
    tracking.create_redo_branch(step_number=3, redo_number=1, hypothesis=feedback)

The adapter has every callback of ``WorkflowCallbacks`` under its name and signature (``StepInfo``
and ``PlanInfo`` are read by attribute, so CMBAgent's classes or any look-alike will do), so
``merge_callbacks`` accepts it, and so does ``WorkflowCallbacks(**tracking.callbacks())``.

Where things go:

- ``on_phase_change`` opens a phase node when the phase name changes (CMBAgent repeats the
  current phase before each step: that changes nothing); ``on_step_start`` opens the step's node
  and makes it current, so the AG2 activity of the fresh ``CMBAgent()`` built for the step lands
  under it; ``on_step_complete`` / ``on_step_failed`` close it.
- ``create_redo_branch`` records the branch point and opens the retry's node, which becomes the
  step's current node; past ``max_redos`` it records the refusal and raises
  :class:`~agent_shim.workflow.MaxRedosExceeded`.
- ``on_agent_message``, ``on_code_execution``, ``on_tool_call``, ``on_cost_update``,
  ``on_progress``, ``on_agent_start`` and ``on_agent_complete`` become ``callback`` events (the
  subtype is the callback's name without ``on_``). CMBAgent sends these after the fact, from the
  chat history, so they are kept apart from the captured AG2 events (``message``, ``code_exec``,
  ...), and its cost summary is not written to ``cost_records``: each LLM call already is.
  A message CMBAgent found no agent name for is reported under its role (``assistant``,
  ``user``, ...): it is recorded on the step, not as a sub-agent.
- The run: the one current when the first callback comes (``tracker.run`` or, without one, the
  process's implicit run); ``on_workflow_start`` opens a run of its own when none is current,
  and ``on_workflow_complete`` / ``on_workflow_failed`` end it. CMBAgent's phases end without a
  callback, and the fork never calls ``on_workflow_complete``: whatever is still open is closed
  when its run ends (the ``with`` block, or the process's exit for the implicit run).

Callbacks never raise into CMBAgent (an internal error is logged); ``create_redo_branch`` does,
on purpose, when a redo is refused or the step never ran.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

from . import activate
from .context import CURRENT, Scope
from .tracker import Span
from .workflow import (
    WORKFLOW,
    Graph,
    MaxRedosExceeded,
    Node,
    RunScope,
    WorkflowError,
    check_redo_allowed,
)

__all__ = ["tracking_callbacks", "CMBAgentTracking", "CALLBACKS", "MaxRedosExceeded",
           "WorkflowError"]

log = logging.getLogger(__name__)

CALLBACK = "callback"
"""``event_type`` of what CMBAgent's reporting callbacks tell."""

#: Every field of CMBAgent's ``WorkflowCallbacks``.
CALLBACKS = (
    "on_planning_start", "on_planning_complete", "on_step_start", "on_step_complete",
    "on_step_failed", "on_workflow_start", "on_workflow_complete", "on_workflow_failed",
    "on_progress", "on_agent_start", "on_agent_complete", "should_continue", "on_pause_check",
    "on_cost_update", "on_agent_message", "on_code_execution", "on_tool_call",
    "on_phase_change",
)

#: What CMBAgent reports as the agent of a chat message that names none: the message's role
#: (``msg.get("name", msg.get("role", "unknown"))``). Not agents, so no sub-agent node.
ROLE_NAMES = frozenset({"assistant", "user", "system", "tool", "function", "unknown"})

#: The callbacks that tell the workflow's structure (the rest report what happened in it).
STRUCTURE = frozenset({
    "on_workflow_start", "on_phase_change", "on_planning_start", "on_planning_complete",
    "on_step_start", "on_step_complete", "on_step_failed", "on_workflow_complete",
    "on_workflow_failed"})

F = TypeVar("F", bound=Callable[..., Any])


def _never_raises(method: F) -> F:
    """A callback: a no-op with capture off, and an internal error is logged, not raised."""

    @functools.wraps(method)
    def wrapper(self: CMBAgentTracking, *args: Any, **kwargs: Any) -> Any:
        if not self.tracker.enabled:
            return None
        if not self.records_structure and method.__name__ in STRUCTURE:
            return None  # the zero-code capture records it (agent_shim.cmbagent_capture)
        try:
            return method(self, *args, **kwargs)
        except Exception:
            log.warning("cmbagent-tracking: %s could not be recorded", method.__name__,
                        exc_info=True)
            return None

    return wrapper  # type: ignore[return-value]


def tracking_callbacks(tracker: Any = None, max_redos: int = 2) -> CMBAgentTracking:
    """The CMBAgent adapter, recording into ``tracker`` (default: ``agent_shim.activate()``)."""
    if tracker is None:
        tracker = activate()
    if isinstance(max_redos, bool) or not isinstance(max_redos, int) or max_redos < 0:
        raise ValueError(f"max_redos must be a non-negative integer, not {max_redos!r}")
    return CMBAgentTracking(tracker, max_redos, records_structure=not _structure_captured)


#: Whether the zero-code capture (:mod:`agent_shim.cmbagent_capture`) records CMBAgent's phases
#: and steps in this process; it says so when it installs its hooks.
_structure_captured = False


def structure_captured() -> None:
    """From now on the zero-code capture records the structure: a ``tracking_callbacks()``
    records CMBAgent's reports only, so nothing is recorded twice."""
    global _structure_captured
    _structure_captured = True


def _status(info: Any) -> str | None:
    """``StepInfo.status`` as text (CMBAgent's ``StepStatus`` enum or a string)."""
    status = getattr(info, "status", None)
    return getattr(status, "value", status)


class CMBAgentTracking:
    """One CMBAgent workflow's callbacks (see the module docstring).

    With ``records_structure=False`` (the zero-code capture records the structure itself) the
    structure callbacks do nothing and the reports land wherever the workflow is now.
    """

    def __init__(self, tracker: Any, max_redos: int | None = 2, *,
                 records_structure: bool = True) -> None:
        self.tracker = tracker
        self.max_redos = max_redos
        self.records_structure = records_structure
        self._attempt: Span | None = None
        self._attempt_is_scope = False  # whether the open attempt is the workflow's scope
        self._graph: Graph | None = None
        self._run: RunScope | None = None  # opened by on_workflow_start, ended by us
        self._outer: Scope | None = None  # the scope current before the workflow began
        self._phase: Node | None = None
        self._step: Node | None = None
        self._run_id: uuid.UUID | None = None

    @property
    def run_id(self) -> uuid.UUID | None:
        """The run the workflow is (or was last) recorded in; ``None`` before any callback."""
        return self._run_id

    def callbacks(self) -> dict[str, Callable[..., Any]]:
        """The callbacks by name: ``WorkflowCallbacks(**tracking.callbacks())``."""
        return {name: getattr(self, name) for name in CALLBACKS}

    # --- the workflow's structure ------------------------------------------------------------

    @_never_raises
    def on_workflow_start(self, task: str, config: dict[str, Any]) -> None:
        if self._graph is None and CURRENT.get() is None:
            self._run = self.tracker.run(task, config=config)
            self._run.__enter__()
            self._bind(self._run.graph)
        self._event("workflow_start", inputs={"task": task}, meta={"config": config})

    @_never_raises
    def on_phase_change(self, phase: str, step_number: int | None) -> None:
        if self._phase is not None and self._phase.name == phase:
            return
        self._end_step("completed")
        if self._phase is not None:
            self._phase.close("completed")
        self._phase = self._workflow().phase(phase)
        self._activate()

    @_never_raises
    def on_planning_start(self, task: str, config: dict[str, Any]) -> None:
        if self._phase is None or self._phase.name != "planning":
            self.on_phase_change("planning", None)
        self._event("planning_start", inputs={"task": task}, meta={"config": config})

    @_never_raises
    def on_planning_complete(self, plan_info: Any) -> None:
        num_steps = getattr(plan_info, "num_steps", None)
        planning_time = getattr(plan_info, "planning_time", None)
        self._event("plan", outputs={"steps": getattr(plan_info, "steps", None),
                                     "plan_text": getattr(plan_info, "plan_text", None)},
                    meta={"num_steps": num_steps, "planning_time": planning_time})
        if self._phase is not None and self._phase.name == "planning":
            self._phase.close("completed", num_steps=num_steps, planning_time=planning_time)
            self._phase = None
            self._activate()

    @_never_raises
    def on_step_start(self, step_info: Any) -> None:
        number = step_info.step_number
        if self._step is not None and self._step.number == number and not self._step.closed:
            return
        self._end_step("completed")
        self._step = self._workflow().step(
            number, getattr(step_info, "goal", None),
            description=getattr(step_info, "description", None))
        self._activate()

    @_never_raises
    def on_step_complete(self, step_info: Any) -> None:
        if _status(step_info) == "skipped":
            self._skip(step_info)
            return
        self._end_attempt("completed")
        self._node_of(step_info).close(
            "completed", summary=getattr(step_info, "summary", None),
            execution_time=getattr(step_info, "execution_time", None),
            result=getattr(step_info, "result", None))
        self._activate()

    @_never_raises
    def on_step_failed(self, step_info: Any) -> None:
        if _status(step_info) == "skipped":
            self._skip(step_info)
            return
        self._end_attempt("failed")
        self._node_of(step_info).close("failed", error=getattr(step_info, "error", None))
        self._activate()

    def skip_step(self, step_number: int, goal: str | None = None,
                  reason: str | None = None) -> None:
        """Record a step the workflow skips (CMBAgent's HITL skip has no callback)."""
        if self.tracker.enabled:
            self._workflow().skip(step_number, goal, reason)
            self._activate()

    def attempt(self, **meta: Any) -> AbstractContextManager[Any]:
        """``with tracking.attempt():`` one attempt at the current step (a fresh ``CMBAgent()``);
        recorded ``failed`` if the block raises. CMBAgent's attempt loop has no callback."""
        if not self.tracker.enabled or self._step is None or self._step.closed:
            return nullcontext()
        return self._step.attempt(**meta)

    def create_redo_branch(self, step_number: int, redo_number: int,
                           hypothesis: str | None) -> str | None:
        """Record redo ``redo_number`` of step ``step_number`` and open the retry's node.

        Returns the retry node's id (``None`` with capture off). Raises
        :class:`~agent_shim.workflow.MaxRedosExceeded` past ``max_redos`` (the refusal and the
        forced acceptance are recorded), and :class:`~agent_shim.workflow.WorkflowError` for a
        step that never started or a redo number out of sequence.
        """
        if not self.tracker.enabled:
            check_redo_allowed(step_number, redo_number, self.max_redos)
            return None
        self._end_attempt("failed")
        self._step = self._workflow().redo(step_number, hypothesis, redo_number=redo_number,
                                           max_redos=self.max_redos)
        self._activate()
        return str(self._step.uuid)

    # --- what the zero-code capture adds (CMBAgent has no callback for these) ----------------

    @_never_raises
    def end_phase(self, status: str, error: str | None = None) -> None:
        """The current phase (and its open step) ended."""
        self._end_step(status)
        if self._phase is not None:
            self._phase.close(status, error=error)
            self._phase = None
        self._activate()

    @property
    def current_step(self) -> Node | None:
        """The step node the workflow is in (or last was), if any."""
        return self._step

    @_never_raises
    def begin_attempt(self, current: bool = True, **meta: Any) -> None:
        """A new attempt at the current step begins (a fresh ``CMBAgent()``); the one before it,
        if any, failed. The attempt ends with the step. With ``current=False`` the attempt is
        recorded in the step without becoming the current scope (it begins inside AG2's own
        spans, which restore the scope when they end)."""
        if self._step is None or self._step.closed:
            return
        self._end_attempt("failed")
        self._attempt = self._step.start_attempt(**meta)
        self._attempt_is_scope = current
        if current:
            CURRENT.set(self._attempt.inner)

    @_never_raises
    def resume(self) -> None:
        """Make where the workflow is now (its open attempt, step or phase) the current scope
        again, after code that does not restore it."""
        self._activate()

    @_never_raises
    def redo(self, step_number: int, hypothesis: str | None) -> None:
        """The next redo of ``step_number``; past ``max_redos`` the refusal is recorded and the
        step's last result stands (as CMBAgent's HITL control phase does). The attempt that
        ran before the review had completed: the reviewer wants it done again."""
        self._end_attempt("completed")
        try:
            self._step = self._workflow().redo(step_number, hypothesis, max_redos=self.max_redos)
        except MaxRedosExceeded:
            pass
        self._activate()

    @_never_raises
    def on_workflow_complete(self, final_context: dict[str, Any], total_time: float) -> None:
        self._event("workflow_complete", meta={"total_time": total_time,
                                               "final_context": final_context})
        self._finish("completed", None)

    @_never_raises
    def on_workflow_failed(self, error: str, step_number: int | None) -> None:
        self._event("workflow_failed", status="failed", error=error,
                    meta={"step": step_number})
        self._finish("failed", error)

    # --- what CMBAgent reports ---------------------------------------------------------------

    @_never_raises
    def on_agent_message(self, agent: str, role: str, content: str,
                         metadata: dict[str, Any]) -> None:
        self._report("agent_message", agent, inputs={"role": role, "content": content},
                     meta=metadata)

    @_never_raises
    def on_code_execution(self, agent: str, code: str, language: str,
                          result: str | None) -> None:
        self._report("code_execution", agent, inputs={"code": code, "language": language},
                     outputs={"result": result})

    @_never_raises
    def on_tool_call(self, agent: str, tool_name: str, arguments: dict[str, Any],
                     result: Any) -> None:
        self._report("tool_call", agent, inputs={"tool_name": tool_name, "arguments": arguments},
                     outputs={"result": result})

    @_never_raises
    def on_cost_update(self, cost_data: dict[str, Any]) -> None:
        self._report("cost_update", None, meta=cost_data)

    @_never_raises
    def on_progress(self, message: str, data: dict[str, Any]) -> None:
        self._report("progress", None, inputs={"message": message}, meta=data)

    @_never_raises
    def on_agent_start(self, agent: str, step_number: int) -> None:
        self._report("agent_start", agent, meta={"step": step_number})

    @_never_raises
    def on_agent_complete(self, agent: str, step_number: int, data: dict[str, Any]) -> None:
        self._report("agent_complete", agent, outputs=data, meta={"step": step_number})

    def should_continue(self) -> bool:
        """Tracking never pauses or stops a workflow."""
        return True

    def on_pause_check(self) -> None:
        return None

    # --- internals ---------------------------------------------------------------------------

    def _workflow(self) -> Graph:
        if self._graph is None:
            self._outer = CURRENT.get()
            self._bind(self.tracker.graphs.of(self.tracker.scope()))
        assert self._graph is not None
        return self._graph

    def _bind(self, graph: Graph | None) -> None:
        self._graph = graph
        if graph is not None:
            self._run_id = uuid.UUID(bytes=graph.base.run)

    def _scope(self) -> Scope:
        """Where the workflow is now: the open attempt or step, else the open phase, else the
        run."""
        if not self.records_structure:
            current: Scope = self.tracker.scope()
            return current
        if self._attempt is not None and self._attempt_is_scope:
            return self._attempt.inner
        for node in (self._step, self._phase):
            if node is not None and not node.closed:
                return node.scope
        return self._outer or self._workflow().base

    def _activate(self) -> None:
        # Callbacks run on the workflow's own thread, just before and after the agents they
        # describe, so the AG2 activity in between sees this scope.
        CURRENT.set(self._scope())

    def _node_of(self, step_info: Any) -> Node:
        number = step_info.step_number
        node = self._workflow().steps.get(number)
        if node is None:  # completed or failed without a start: record both ends now
            node = self._workflow().step(number, getattr(step_info, "goal", None))
        return node

    def _skip(self, step_info: Any) -> None:
        self.skip_step(step_info.step_number, getattr(step_info, "goal", None),
                       getattr(step_info, "error", None) or getattr(step_info, "summary", None))

    def _end_step(self, status: str) -> None:
        self._end_attempt(status)
        if self._step is not None:
            self._step.close(status)
            self._step = None

    def _end_attempt(self, status: str) -> None:
        if self._attempt is not None:
            self.tracker.end_span(self._attempt, status=status)
            self._attempt = None

    def _event(self, subtype: str, **fields: Any) -> None:
        self.tracker.event(WORKFLOW, subtype=subtype, scope=self._scope(), **fields)

    def _report(self, subtype: str, agent: str | None, **fields: Any) -> None:
        if agent in ROLE_NAMES:  # an unnamed message: it stays on the step itself
            agent = None
        self.tracker.event(CALLBACK, subtype=subtype, agent_name=agent, scope=self._scope(),
                           **fields)

    def _finish(self, status: str, error: str | None) -> None:
        self._end_step(status)
        if self._phase is not None:
            self._phase.close(status, error=error)
            self._phase = None
        if self._run is not None:
            self._run.close(status, error)
            self._run = None
        CURRENT.set(self._outer)
        self._graph = None
        self._outer = None

