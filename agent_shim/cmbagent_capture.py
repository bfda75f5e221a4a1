"""Zero-code CMBAgent capture: CMBAgent's own structure, recorded when ``cmbagent`` is imported.

Installed by the startup hook right after ``import cmbagent`` (``_autoload``), with capture on.
What is recognised:

- **every version**: the workflow entry points of the ``cmbagent`` module (:data:`ENTRY_POINTS`)
  each record a run with its task (the outermost call only) and end it, and every node still
  open in it, when they return (``completed``) or raise (``failed``);
- **the fork with phases** (``cmbagent.phases.execution_manager``): each ``WorkflowExecutor.run``
  is a run too; each phase and step from ``PhaseExecutionManager`` (``start``/``complete``/
  ``fail``, ``start_step``/``complete_step``/``fail_step``), each attempt at a step (a fresh
  ``CMBAgent()`` while the step runs; an attempt followed by another failed), and the HITL
  control phase's redos (its step review answering ``redo``): a ``redo_<n>`` branch with the
  reviewer's feedback as hypothesis, the phase's ``max_redos`` respected and exceeding it
  recorded;
- **released versions** (``cmbagent.cmbagent.CMBAgent`` and ``cmbagent.functions`` without
  phases), from CMBAgent's own bookkeeping: each ``CMBAgent.solve`` is the planning phase
  (started at ``plan_setter``) or control; a solve for one step (its ``step`` argument, ``1`` in
  ``one_shot`` mode) is that step, ended when it returns (failed if it used up
  ``max_n_attempts``); in a solve for the whole plan the ``record_status`` /
  ``record_status_starter`` tools open and complete the steps (``current_plan_step_number``,
  ``current_status``); each ``post_execution_transfer`` that sends a failed execution back for a
  fix ends the step's attempt as failed and begins the next;
- anything else: AG2's flat capture only, and one warning.

The structure goes through one :class:`~agent_shim.cmbagent.CMBAgentTracking` per run, so a
``tracking_callbacks()`` also given to the fork records its reports only: nothing twice. Every
hook calls CMBAgent's own method (first, but for the ``solve`` and ``CMBAgent()`` hooks, which
record just before) and never raises into it; a version whose hooks cannot be installed gets the
flat capture.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import ModuleType, SimpleNamespace
from typing import Any

from . import activate, cmbagent
from .cmbagent import CMBAgentTracking

log = logging.getLogger(__name__)

#: The workflow functions of the ``cmbagent`` module that are one run each (those it has).
ENTRY_POINTS = (
    "one_shot", "planning_and_control", "planning_and_control_context_carryover",
    "deep_research", "control", "human_in_the_loop", "idea_generation", "idea_to_execution",
    "hitl_interactive_workflow", "hitl_planning_only_workflow", "hitl_error_recovery_workflow",
)

#: The structure of the workflow running in this context (``None``: the process's run).
_WORKFLOW: ContextVar[CMBAgentTracking | None] = ContextVar("cmbagent_workflow", default=None)
#: The plan step the running ``CMBAgent.solve`` is for (released versions' carryover mode).
_SOLVING_STEP: ContextVar[int | None] = ContextVar("cmbagent_solving_step", default=None)
_installed: str | None = None  # "fork", "released" or "flat" once installed
_by_run: dict[bytes, CMBAgentTracking] = {}


def records_structure() -> bool:
    """Whether the zero-code capture records CMBAgent's phases and steps in this process."""
    return _installed in ("fork", "released")


def install(module: ModuleType, tracker: Any = None) -> str | None:
    """Recognise the imported ``cmbagent`` and hook it, once, to record into ``tracker``
    (default: ``agent_shim.activate()``); returns what was recognised, ``None`` with capture
    off."""
    global _installed
    if tracker is None:
        tracker = activate()
    if not tracker.enabled or _installed is not None:
        return _installed
    kind = _recognise()
    for name in ENTRY_POINTS:
        function = getattr(module, name, None)
        if callable(function):
            setattr(module, name, _entry_point(tracker, name, function))
    hooks = {"fork": _hook_fork, "released": _hook_released}.get(kind)
    try:
        if hooks is not None:
            hooks(tracker)
    except Exception:
        log.debug("cmbagent-tracking: hooking CMBAgent failed", exc_info=True)
        kind = "flat"
    if kind == "flat":
        log.warning("cmbagent-tracking: this CMBAgent version (%s) is not recognised: its AG2 "
                    "activity is captured, its phases and steps are not",
                    getattr(module, "__version__", "unknown"))
    _installed = kind
    if records_structure():
        cmbagent.structure_captured()
    return kind


def _recognise() -> str:
    def has(module: str, attribute: str) -> bool:
        try:
            return hasattr(importlib.import_module(module), attribute)
        except Exception:
            return False

    if has("cmbagent.phases.execution_manager", "PhaseExecutionManager"):
        return "fork"
    if has("cmbagent.cmbagent", "CMBAgent") and has("cmbagent.functions", "register_function"):
        return "released"
    return "flat"


# --- where the structure goes ------------------------------------------------------------------


def _tracking(tracker: Any) -> CMBAgentTracking:
    """The structure of the workflow running now: its entry point's, else its run's."""
    tracking = _WORKFLOW.get()
    if tracking is None:
        run = tracker.scope().run
        tracking = _by_run.get(run) or _by_run.setdefault(run, CMBAgentTracking(tracker, None))
    return tracking


def _entry_point(tracker: Any, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` (a workflow function of the ``cmbagent`` module) as one run with its
    ``task`` argument."""
    signature = inspect.signature(function)

    def task_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            return signature.bind_partial(*args, **kwargs).arguments.get("task")
        except TypeError:
            return None

    @functools.wraps(function)
    def workflow(*args: Any, **kwargs: Any) -> Any:
        if _WORKFLOW.get() is not None:  # called from inside another workflow: its run holds
            return function(*args, **kwargs)
        with _workflow_run(tracker, name, task_of(args, kwargs)):
            return function(*args, **kwargs)

    return workflow


def _executor_entry_point(tracker: Any, run: Callable[..., Any]) -> Callable[..., Any]:
    """The fork's ``WorkflowExecutor.run`` (a composed workflow, ``run_sync`` included) as one
    run with the executor's task, named after its workflow definition."""

    @functools.wraps(run)
    async def workflow(self: Any) -> Any:
        if _WORKFLOW.get() is not None:
            return await run(self)
        name = getattr(getattr(self, "workflow", None), "id", None) or "workflow"
        with _workflow_run(tracker, str(name), getattr(self, "task", None)):
            return await run(self)

    return workflow


@contextmanager
def _workflow_run(tracker: Any, name: str, task: Any) -> Iterator[None]:
    """One workflow's run with its task; the phase, step and attempt still open when the block
    ends are closed with it (``completed``, or ``failed`` with the error it raised)."""
    with tracker.run(None if task is None else str(task), workflow=name):
        tracking = CMBAgentTracking(tracker, None)
        token = _WORKFLOW.set(tracking)
        try:
            yield
        except BaseException as exc:
            tracking.end_phase("failed", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            _WORKFLOW.reset(token)
        tracking.end_phase("completed")


def _after(owner: Any, name: str, record: Callable[..., None]) -> None:
    """Wrap ``owner.name``: the original runs first, then ``record(self, result, *args,
    **kwargs)``, whose errors are logged and never reach CMBAgent."""
    original = getattr(owner, name)

    def observe(*args: Any, **kwargs: Any) -> None:
        try:
            record(*args, **kwargs)
        except Exception:
            log.warning("cmbagent-tracking: %s.%s could not be recorded", owner.__name__, name,
                        exc_info=True)

    if inspect.iscoroutinefunction(original):
        @functools.wraps(original)
        async def async_hook(self: Any, *args: Any, **kwargs: Any) -> Any:
            result = await original(self, *args, **kwargs)
            observe(self, result, *args, **kwargs)
            return result
        setattr(owner, name, async_hook)
    else:
        @functools.wraps(original)
        def hook(self: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(self, *args, **kwargs)
            observe(self, result, *args, **kwargs)
            return result
        setattr(owner, name, hook)


def _before(owner: Any, name: str, record: Callable[..., None]) -> None:
    """Wrap ``owner.name``: ``record(self, *args, **kwargs)`` first (never raising), then the
    original."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def hook(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            record(self, *args, **kwargs)
        except Exception:
            log.warning("cmbagent-tracking: %s.%s could not be recorded", owner.__name__, name,
                        exc_info=True)
        return original(self, *args, **kwargs)

    setattr(owner, name, hook)


def _argument(function: Callable[..., Any], name: str, args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> Any:
    """Argument ``name`` of a call to the method ``function`` (``args`` without ``self``)."""
    return inspect.signature(function).bind_partial(None, *args, **kwargs).arguments.get(name)


# --- the fork ------------------------------------------------------------------------------------


def _hook_fork(tracker: Any) -> None:
    from cmbagent.cmbagent import CMBAgent  # type: ignore[import-not-found]
    from cmbagent.phases.execution_manager import PhaseExecutionManager  # type: ignore[import-not-found]

    manager = PhaseExecutionManager
    original = {name: getattr(manager, name) for name in
                ("start", "complete", "fail", "start_step", "complete_step", "fail_step")}

    def start(self: Any, result: Any) -> None:
        tracking = _tracking(tracker)
        tracking.max_redos = getattr(getattr(self.phase, "config", None), "max_redos", None)
        tracking.on_phase_change(self.phase.phase_type, None)

    def fail(self: Any, result: Any, error: str, *args: Any, **kwargs: Any) -> None:
        _tracking(tracker).end_phase("failed", error)

    def start_step(self: Any, result: Any, *args: Any, **kwargs: Any) -> None:
        number = _argument(original["start_step"], "step_number", args, kwargs)
        goal = _argument(original["start_step"], "description", args, kwargs)
        _tracking(tracker).on_step_start(SimpleNamespace(step_number=number, goal=goal,
                                                         description=goal))

    def complete_step(self: Any, result: Any, *args: Any, **kwargs: Any) -> None:
        arguments = inspect.signature(original["complete_step"]).bind_partial(
            None, *args, **kwargs).arguments
        _tracking(tracker).on_step_complete(SimpleNamespace(
            step_number=arguments["step_number"], summary=arguments.get("summary"),
            result=arguments.get("result"), status="completed"))

    def fail_step(self: Any, result: Any, *args: Any, **kwargs: Any) -> None:
        arguments = inspect.signature(original["fail_step"]).bind_partial(
            None, *args, **kwargs).arguments
        _tracking(tracker).on_step_failed(SimpleNamespace(
            step_number=arguments["step_number"], error=arguments.get("error"), status="failed"))

    _after(manager, "start", start)
    _after(manager, "complete", lambda self, result, *a, **k: _tracking(tracker).end_phase(
        "completed"))
    _after(manager, "fail", fail)
    _after(manager, "start_step", start_step)
    _after(manager, "complete_step", complete_step)
    _after(manager, "fail_step", fail_step)
    _before(CMBAgent, "__init__", lambda self, *a, **k: _tracking(tracker).begin_attempt())
    _hook_hitl_redo(tracker)
    try:
        from cmbagent.workflows.composer import WorkflowExecutor  # type: ignore
    except Exception:
        return
    WorkflowExecutor.run = _executor_entry_point(tracker, WorkflowExecutor.run)


def _hook_hitl_redo(tracker: Any) -> None:
    try:
        from cmbagent.phases.hitl_control import HITLControlPhase  # type: ignore
    except Exception:
        return
    review = HITLControlPhase._request_step_review

    def reviewed(self: Any, result: Any, *args: Any, **kwargs: Any) -> None:
        # The HITL control phase redoes the step on ``None`` or ``{"redo": True, ...}``.
        if result is None or (isinstance(result, dict) and result.get("redo")):
            feedback = result.get("feedback") if isinstance(result, dict) else None
            _tracking(tracker).redo(_argument(review, "step_num", args, kwargs), feedback)

    _after(HITLControlPhase, "_request_step_review", reviewed)


# --- released versions -------------------------------------------------------------------------

#: The tools of CMBAgent's control agents that record the step's number and status.
STATUS_TOOLS = frozenset({"record_status", "record_status_starter"})


def _hook_released(tracker: Any) -> None:
    from cmbagent import functions  # type: ignore[import-not-found]
    from cmbagent.cmbagent import CMBAgent

    solve = CMBAgent.solve

    def solving(self: Any, *args: Any, **kwargs: Any) -> None:
        arguments = inspect.signature(solve).bind_partial(None, *args, **kwargs).arguments
        tracking = _tracking(tracker)
        number = arguments.get("step")
        if number is None and arguments.get("mode") in ("one_shot", "chat"):
            number = 1  # CMBAgent runs one_shot as the one step of a one-step plan
        _SOLVING_STEP.set(number if isinstance(number, int) else None)
        if arguments.get("initial_agent") == "plan_setter":
            tracking.on_phase_change("planning", None)
        else:
            tracking.on_phase_change("control", None)
            if isinstance(number, int):
                _start_step(tracking, number)

    def solved(self: Any, result: Any, *args: Any, **kwargs: Any) -> None:
        number = _SOLVING_STEP.get()
        _SOLVING_STEP.set(None)
        if number is not None:
            _end_solved_step(_tracking(tracker), number, getattr(self, "final_context", None))

    _before(CMBAgent, "solve", solving)
    _after(CMBAgent, "solve", solved)
    register = functions.register_function

    @functools.wraps(register)
    def registering(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return register(_observed_tool(tracker, function), *args, **kwargs)

    functions.register_function = registering


def _end_solved_step(tracking: CMBAgentTracking, number: int, context: Any) -> None:
    """A ``solve`` for one step returned: the step failed if it used up CMBAgent's
    ``max_n_attempts`` (CMBAgent then stops the plan), else it completed."""
    attempts, allowed = _get(context, "n_attempts"), _get(context, "max_n_attempts")
    if isinstance(attempts, int) and isinstance(allowed, int) and attempts >= allowed:
        tracking.on_step_failed(SimpleNamespace(
            step_number=number, status="failed",
            error=f"{attempts} failed executions: CMBAgent's max_n_attempts ({allowed}) reached"))
    else:
        tracking.on_step_complete(SimpleNamespace(step_number=number, status="completed"))


def _start_step(tracking: CMBAgentTracking, number: int) -> None:
    """Step ``number`` is the current one (opened, with its first attempt, if new)."""
    step = tracking.current_step
    if step is None or step.number != number or step.closed:
        tracking.on_step_start(SimpleNamespace(step_number=number, goal=None, description=None))
        tracking.begin_attempt(current=False)
    else:
        tracking.resume()


def _observed_tool(tracker: Any, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` itself, or, for the tools that keep CMBAgent's step bookkeeping, a wrapper
    (same name and signature, so AG2 offers the same tool) that records what they changed."""
    name = getattr(function, "__name__", "")
    if name not in STATUS_TOOLS and name != "post_execution_transfer":
        return function

    @functools.wraps(function)
    def tool(*args: Any, **kwargs: Any) -> Any:
        context = kwargs.get("context_variables")
        attempts = _get(context, "n_attempts")
        result = function(*args, **kwargs)
        try:
            if name in STATUS_TOOLS:
                _status_recorded(_tracking(tracker), context)
            elif kwargs.get("execution_status") == "failure" and _get(
                    context, "n_attempts") != attempts:  # sent back for a fix
                _tracking(tracker).begin_attempt(current=False)
        except Exception:
            log.warning("cmbagent-tracking: %s could not be recorded", name, exc_info=True)
        return result

    return tool


def _get(context: Any, key: str) -> Any:
    try:
        return context.get(key)
    except Exception:
        return None


def _status_recorded(tracking: CMBAgentTracking, context: Any) -> None:
    number, status = _get(context, "current_plan_step_number"), _get(context, "current_status")
    solving = _SOLVING_STEP.get()
    if not isinstance(number, int) or not isinstance(status, str) or solving not in (None,
                                                                                      number):
        return  # the carryover mode's hand-over to the next step, which its own solve runs
    # A step's own solve (carryover, one_shot) ends it when it returns; a "failed" status sends
    # the step back to its agent (an attempt, counted by post_execution_transfer).
    _start_step(tracking, number)
    if "completed" in status and solving is None:  # a step of a solve for the whole plan
        tracking.on_step_complete(SimpleNamespace(step_number=number, status=status))
