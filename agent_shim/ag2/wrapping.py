"""One wrapper factory for every hooked AG2 method, sync or async.

A wrapper asks its :class:`Hook` to :meth:`~Hook.enter` a call (our code, inside a ``try`` that
never lets an error out), runs the user's method *outside* that ``try`` so its exceptions
propagate unchanged, then has the hook :meth:`~Hook.leave` it. A hook whose own code fails is
disabled, logged once, and from then on calls straight through.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..context import CURRENT, Scope
from ..payload import describe_error
from ..tracker import Span, Tracker
from .propagation import AgentScopes, ToolCallOrigins

log = logging.getLogger(__name__)

Args = tuple[Any, ...]
Kwargs = dict[str, Any]



class Innermost(NamedTuple):
    """The hooks' state in a context: what the innermost wrapped call is, and the innermost
    agent call around it. One ContextVar holds it, so a call reads it once and sets it once."""

    #: The hook and the id of the call's ``self``: a subclass override that calls ``super()``
    #: reaches the base class's wrapper with the same two and is not recorded twice.
    hook: Hook
    self_id: int
    #: The innermost agent call: ``(agent, sender)``; tools and code executors read it.
    caller: tuple[Any, Any] | None


INNERMOST: ContextVar[Innermost | None] = ContextVar("cmbagent_ag2_innermost", default=None)
_new = tuple.__new__  # makes an Innermost in half the time its generated ``__new__`` takes


def caller() -> tuple[Any, Any] | None:
    """The innermost agent call around this one: ``(agent, sender)``, or ``None``."""
    state = INNERMOST.get()
    return None if state is None else state.caller

WRAPPED_ATTR = "__cmbagent_original__"


@dataclass(slots=True)
class Start:
    """What an activity records when a call begins."""

    agent_name: str | None = None
    subtype: str | None = None
    inputs: Any = None
    meta: dict[str, Any] | None = None
    #: Whose open agent-call span parents this call when no scope is current (a thread hop).
    fallback_agent: Any = None
    #: Set by agent calls only: this call is ``owner``'s reply to ``sender``.
    owner: Any = None
    sender: Any = None
    #: Anything the activity wants back in ``end``.
    state: Any = None


@dataclass(slots=True)
class End:
    """What an activity records when a call ends."""

    status: str = "completed"
    outputs: Any = None
    meta: dict[str, Any] | None = None
    subtype: str | None = None
    error: str | None = None
    #: Keyword arguments for :meth:`Tracker.cost`, recorded against this span.
    cost: dict[str, Any] | None = None


class Activity:
    """What one kind of AG2 call records; subclasses override ``begin`` and ``end``."""

    event_type = ""
    #: A point event (a message) is recorded at entry and never becomes a parent.
    point = False

    def begin(self, args: Args, kwargs: Kwargs) -> Start | None:
        """Describe the call from its arguments (``args[0]`` is ``self``); ``None`` skips it."""
        raise NotImplementedError

    def end(self, result: Any, start: Start) -> End:
        return End()

    def fail(self, exc: BaseException, start: Start) -> End:
        return End(status="failed", error=describe_error(exc))


@dataclass
class Runtime:
    """State shared by all hooks of one installation."""

    tracker: Tracker
    agent_scopes: AgentScopes = field(default_factory=AgentScopes)
    tool_origins: ToolCallOrigins = field(default_factory=ToolCallOrigins)
    disabled: list[str] = field(default_factory=list)


#: One recorded call between entry and exit: what its activity began with, its span (``None``
#: for a point event), and the tokens that undo its ContextVar changes. A tuple: made at C speed.
Call = tuple[Start, Span | None, Token[Innermost | None], Token[Scope | None] | None]


class Hook:
    """One hooked method name (shared by the base class and every override of it)."""

    def __init__(self, key: str, activity: Activity, runtime: Runtime) -> None:
        self.key = key
        self.activity = activity
        self.runtime = runtime
        self.enabled = True

    def wrap(self, original: Callable[..., Any]) -> Callable[..., Any]:
        """A wrapper around ``original`` (an ``async def`` wrapper for a coroutine function)."""
        enter, leave = self.enter, self.leave
        if inspect.iscoroutinefunction(original):

            @functools.wraps(original)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                call = enter(args, kwargs)
                if call is None:
                    return await original(*args, **kwargs)
                try:
                    result = await original(*args, **kwargs)
                except BaseException as exc:
                    leave(call, None, exc)
                    raise
                leave(call, result, None)
                return result

        else:

            @functools.wraps(original)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                call = enter(args, kwargs)
                if call is None:
                    return original(*args, **kwargs)
                try:
                    result = original(*args, **kwargs)
                except BaseException as exc:
                    leave(call, None, exc)
                    raise
                leave(call, result, None)
                return result

        setattr(wrapper, WRAPPED_ATTR, original)
        return wrapper

    def enter(self, args: Args, kwargs: Kwargs) -> Call | None:
        """Start recording a call; ``None`` when it is not to be recorded. Never raises."""
        if not self.enabled or not args:
            return None
        try:
            outer = INNERMOST.get()
            self_id = id(args[0])
            if outer is not None and outer.hook is self and outer.self_id == self_id:
                return None
            start = self.activity.begin(args, kwargs)
            if start is None:
                return None
            return self._record_start(start, self_id, None if outer is None else outer.caller)
        except Exception as exc:
            self.disable(exc)
            return None

    def _record_start(self, start: Start, self_id: int, caller: tuple[Any, Any] | None) -> Call:
        runtime = self.runtime
        activity = self.activity
        tracker = runtime.tracker
        scope = CURRENT.get()
        if scope is None and start.fallback_agent is not None:
            scope = runtime.agent_scopes.latest(start.fallback_agent)
        if activity.point:
            tracker.event(activity.event_type, subtype=start.subtype,
                          agent_name=start.agent_name, inputs=start.inputs, meta=start.meta,
                          scope=scope)
            return (start, None, INNERMOST.set(_new(Innermost, (self, self_id, caller))), None)
        span = tracker.start_span(activity.event_type, subtype=start.subtype,
                                  agent_name=start.agent_name, inputs=start.inputs,
                                  meta=start.meta, scope=scope)
        inner = span.inner
        current = CURRENT.set(inner)
        if start.owner is not None:
            caller = (start.owner, start.sender)
            runtime.agent_scopes.push(span, start.owner, inner)
        return (start, span, INNERMOST.set(_new(Innermost, (self, self_id, caller))), current)

    def leave(self, call: Call, result: Any, exc: BaseException | None) -> None:
        """End a call with its result or exception. Never raises."""
        start, span, innermost, current = call
        try:
            INNERMOST.reset(innermost)
            if current is not None:
                CURRENT.reset(current)
        except (ValueError, RuntimeError):  # left in another context: nothing to undo
            pass
        if span is None:
            return
        activity = self.activity
        try:
            if start.owner is not None:
                self.runtime.agent_scopes.pop(span)
            end = activity.fail(exc, start) if exc is not None else activity.end(result, start)
        except Exception as err:
            self.disable(err)
            end = End(status="failed" if exc is not None else "completed")  # never leave it open
        try:
            tracker = self.runtime.tracker
            tracker.end_span(span, status=end.status, outputs=end.outputs, error=end.error,
                             meta=end.meta, subtype=end.subtype)
            if end.cost is not None:
                tracker.cost(**end.cost, event_id=span.id, scope=span.scope)
        except Exception as err:
            self.disable(err)

    def disable(self, exc: BaseException) -> None:
        """Stop recording through this hook after a failure of our own; logged once."""
        if self.enabled:
            self.enabled = False
            self.runtime.disabled.append(self.key)
            log.warning("cmbagent-tracking: AG2 hook %s disabled after an internal error",
                        self.key, exc_info=exc)
