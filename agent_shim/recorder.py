"""The recorder, the tracker's core: builds records on the caller's thread and hands them to a
sink.

The hot path is: read the current scope, build a small dict (a span: a slotted object, which
the sink turns into records on its own thread), snapshot the payloads, append to the sink's
queue. No lock, no I/O, no exception into the caller.

The workflow model (:mod:`agent_shim.workflow`) is built on a recorder; the public
:class:`~agent_shim.tracker.Tracker` is a recorder with workflow runs.
"""

from __future__ import annotations

import logging
import threading
from contextvars import Token
from types import TracebackType
from typing import Any, Protocol

from . import records
from .config import ShimSettings
from .context import CURRENT, Scope
from .payload import describe_error
from .records import Record, Span
from .wire import new_id

log = logging.getLogger(__name__)


class Sink(Protocol):
    """Where records go: the ZeroMQ sender in production, a list in tests. A span is handed
    over itself when it starts and again when it has ended; the sink makes its records."""

    def submit(self, record: Record) -> None: ...
    def span_started(self, span: Span) -> None: ...
    def span_ended(self, span: Span) -> None: ...
    def flush(self, timeout: float) -> bool: ...
    def shutdown(self, timeout: float) -> bool: ...
    def forked(self) -> Sink: ...


class WorkNode(Protocol):
    """An open phase or step of the workflow model, which gives each agent a node of its own."""

    def agent_node(self, agent_name: str) -> bytes: ...


class Recorder:
    """Records sessions, events, spans and costs where they belong (see :class:`Scope`)."""

    enabled = True

    def __init__(self, settings: ShimSettings, sink: Sink) -> None:
        self.settings = settings
        self._attach(sink)
        self._process_scope: Scope | None = None
        self._process_run_owned = False
        self._process_session_owned = False
        self._lock = threading.Lock()
        #: Open phase and step nodes by id, and by the id of each of their sub-agent nodes:
        #: kept by the workflow model, read on every event that names an agent.
        self.work_nodes: dict[bytes | None, WorkNode] = {}

    def _attach(self, sink: Sink) -> None:
        # Its methods bound once: the hot path calls them with no lookup on the sink.
        self._sink = sink
        self._submit = sink.submit
        self._span_started = sink.span_started
        self._span_ended = sink.span_ended

    # --- where events go ------------------------------------------------------------------

    def scope(self) -> Scope:
        """The current scope; outside any run, the process's implicit run."""
        return CURRENT.get() or self._process_scope or self._open_process_run()

    def _open_process_run(self) -> Scope:
        with self._lock:
            if self._process_scope is None:
                settings = self.settings
                if settings.run_id is not None:  # a worker attached to its parent's run
                    scope = Scope(run=settings.run_id, session=settings.session_id)
                else:
                    session = settings.session_id or self.open_session(name="implicit")
                    scope = Scope(run=new_id(), session=session)
                    self._submit(records.run_start(scope, task=None, meta={"implicit": True}))
                    self._process_run_owned = True
                    self._process_session_owned = settings.session_id is None
                self._process_scope = scope
            return self._process_scope

    def _where(self, scope: Scope | None, agent_name: str | None) -> Scope:
        """Where an event goes: the given or current scope; inside a phase or step, the
        sub-agent node of the agent it names."""
        scope = scope or self.scope()
        if agent_name is None or scope.node is None:
            return scope
        owner = self.work_nodes.get(scope.node)
        if owner is None or not isinstance(agent_name, str):  # only a name gets a node of its own
            return scope
        node = owner.agent_node(agent_name)
        return scope if node == scope.node else scope.at_node(node)

    def open_session(self, name: str | None = None, meta: dict[str, Any] | None = None) -> bytes:
        """Record a new session and return its id."""
        session_id = new_id()
        self._submit(records.session(session_id, name=name, status="active", meta=meta))
        return session_id

    def end_session(self, session_id: bytes, status: str) -> None:
        """Record that a session this process opened has ended (``completed`` or ``failed``)."""
        self._submit(records.session(session_id, name=None, status=status))

    # --- events and spans -----------------------------------------------------------------

    def event(
        self,
        event_type: str,
        *,
        subtype: str | None = None,
        agent_name: str | None = None,
        status: str = "completed",
        inputs: Any = None,
        outputs: Any = None,
        meta: Any = None,
        error: str | None = None,
        scope: Scope | None = None,
    ) -> bytes:
        """Record one point event in the current run/node; returns its id."""
        scope = self._where(scope, agent_name)
        event_id = new_id()
        self._submit(records.event(
            scope, event_id, event_type, subtype=subtype, agent_name=agent_name, status=status,
            inputs=inputs, outputs=outputs, meta=meta, error=error))
        return event_id

    def start_span(
        self,
        event_type: str,
        *,
        subtype: str | None = None,
        agent_name: str | None = None,
        inputs: Any = None,
        meta: Any = None,
        scope: Scope | None = None,
    ) -> Span:
        """Open a span (recorded at once as ``running``); the caller must :meth:`end_span` it."""
        scope = self._where(scope, agent_name)
        span = Span(scope, new_id(), event_type, subtype, agent_name, inputs, meta)
        self._span_started(span)
        return span

    def end_span(
        self,
        span: Span,
        *,
        status: str = "completed",
        outputs: Any = None,
        error: str | None = None,
        meta: Any = None,
        subtype: str | None = None,
    ) -> None:
        """Close a span; ``meta`` is merged into what the start recorded."""
        span.end(status, outputs, meta, subtype, error)
        self._span_ended(span)

    def span(self, event_type: str, **fields: Any) -> SpanScope:
        """``with``/``async with`` a span that is the parent of everything inside it."""
        return SpanScope(self, event_type, fields)

    def cost(
        self,
        *,
        model: str | None,
        agent_name: str | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        total_tokens: int | None = None,
        cost_usd: float | None = None,
        event_id: bytes | None = None,
        scope: Scope | None = None,
    ) -> None:
        """Record one LLM call's usage into ``cost_records``."""
        scope = self._where(scope, agent_name)
        self._submit(records.cost(
            scope, model=model, agent_name=agent_name, prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens, total_tokens=total_tokens, cost_usd=cost_usd,
            event_id=event_id))

    def record(self, record: Record) -> None:
        """Submit a prepared record (the workflow model's nodes and edges)."""
        self._submit(record)

    # --- delivery -------------------------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything emitted so far is committed; ``False`` if the timeout passed."""
        return self._sink.flush(timeout)

    def after_fork(self) -> None:
        """In a forked child: a fresh sink; the parent's implicit run stays the parent's to
        close."""
        self._lock = threading.Lock()
        self._process_run_owned = self._process_session_owned = False
        self._attach(self._sink.forked())

    @property
    def process_run(self) -> bytes | None:
        """The process's implicit run, if an event outside any run has opened (or joined) it."""
        scope = self._process_scope
        return None if scope is None else scope.run

    def shutdown(self, timeout: float | None = None) -> bool:
        """Close the implicit run (and the session it opened), deliver what is pending within
        ``timeout``, spool the rest."""
        with self._lock:
            scope = self._process_scope
            run_owned, session_owned = self._process_run_owned, self._process_session_owned
            self._process_run_owned = self._process_session_owned = False
        if scope is not None:
            if run_owned:
                self._submit(records.run_end(scope, "completed", None))
            if session_owned and scope.session is not None:
                self.end_session(scope.session, "completed")
        return self._sink.shutdown(self.settings.exit_timeout if timeout is None else timeout)


class SpanScope:
    """A span as a context manager: the current scope inside, ``failed`` on an exception."""

    __slots__ = ("_tracker", "_event_type", "_fields", "_token", "span")

    def __init__(self, tracker: Recorder, event_type: str, fields: dict[str, Any]) -> None:
        self._tracker = tracker
        self._event_type = event_type
        self._fields = fields
        self._token: Token[Scope | None] | None = None
        self.span: Span | None = None

    def __enter__(self) -> Span:
        self.span = self._tracker.start_span(self._event_type, **self._fields)
        self._token = CURRENT.set(self.span.inner)
        return self.span

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._token is not None:
            CURRENT.reset(self._token)
        if self.span is not None:
            failed = exc is not None
            self._tracker.end_span(self.span, status="failed" if failed else "completed",
                                   error=describe_error(exc) if exc is not None else None)

    async def __aenter__(self) -> Span:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)

