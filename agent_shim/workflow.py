"""The workflow model: a run and, inside it, its phases, steps, sub-agent nodes and redos.

The DAG (contract §4):

- phases and steps are nodes at depth 0, joined in the order they run by ``sequential`` edges;
- each agent that works inside a phase or step gets one ``sub_agent`` node under it (depth 1),
  made on its first event; its events, spans and costs point at that node;
- a redo adds a ``branch_point`` node (``meta.branch_name = "redo_<n>"``, ``meta.hypothesis``),
  joined to the redone step by a ``conditional`` edge, then the retry's own step node, so that
  each attempt's events, tokens and costs stay apart.

Every phase and step is also a span (``event_type="workflow"``, subtype the node type) around
the events recorded inside it, so a run's timeline shows where each began and ended. Node, edge
and run records are built by :mod:`agent_shim.records`.

A tracker's graphs live in its registry (:class:`Graphs`) keyed by run id, so the explicit API
(``tracker.run``), the CMBAgent adapter and the process's implicit run all add to the same DAG of
a run. Open phases and steps are in the recorder's ``work_nodes``, where it finds the node of an
agent that an event names.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from contextvars import Token
from types import TracebackType
from typing import Any

from . import records
from .context import CURRENT, Scope
from .payload import describe_error
from .recorder import Recorder, SpanScope
from .records import Span
from .wire import new_id

WORKFLOW = "workflow"
"""``event_type`` of the spans and events the workflow model records itself."""
PHASE, STEP, SUB_AGENT, BRANCH_POINT = "phase", "step", "sub_agent", "branch_point"


class WorkflowError(RuntimeError):
    """The workflow API was asked for something the model cannot record; says what to do."""


class MaxRedosExceeded(WorkflowError):
    """A redo beyond ``max_redos``; the refusal and the forced acceptance are recorded."""

    def __init__(self, step_number: int, redo_number: int, max_redos: int) -> None:
        super().__init__(
            f"step {step_number}: redo {redo_number} exceeds max_redos={max_redos}. Accept the "
            f"step's last result (recorded as a forced acceptance), or allow more redos with "
            f"tracking_callbacks(max_redos=...) / run.redo(..., max_redos=...)")
        self.step_number = step_number
        self.redo_number = redo_number
        self.max_redos = max_redos


def check_redo_allowed(step_number: int, redo_number: int, max_redos: int | None) -> None:
    """Raise :class:`MaxRedosExceeded` when ``redo_number`` is past ``max_redos``."""
    if max_redos is not None and redo_number > max_redos:
        raise MaxRedosExceeded(step_number, redo_number, max_redos)


# --- records ---------------------------------------------------------------------------------


def _describe(exc: BaseException | None) -> str | None:
    return None if exc is None else describe_error(exc)


# --- nodes -----------------------------------------------------------------------------------


class Node:
    """An open phase or step (a retry is a step): its DAG node and the span around its work.

    ``with node:`` (or ``async with``) makes it current and closes it on exit, ``failed`` if an
    exception leaves the block; :meth:`close` closes it explicitly.
    """

    def __init__(self, graph: Graph, node_id: bytes, name: str, node_type: str,
                 parent_scope: Scope, number: int | None, span_scope: Scope) -> None:
        tracker = graph.tracker
        self.graph = graph
        self.id = node_id
        self.name = name
        self.node_type = node_type
        self.number = number
        self.status = "running"
        #: Where the node was opened; a retry of this step is opened in the same place.
        self.parent_scope = parent_scope
        self._span = tracker.start_span(WORKFLOW, subtype=node_type, meta={"node": name},
                                        scope=span_scope)
        #: The scope of everything recorded inside the node.
        self.scope = self._span.inner
        self._agents: dict[str, bytes] = {}
        self._attempts = 0
        self._lock = threading.Lock()
        self._token: Token[Scope | None] | None = None

    @property
    def closed(self) -> bool:
        return self.status != "running"

    @property
    def uuid(self) -> uuid.UUID:
        return uuid.UUID(bytes=self.id)

    def agent_node(self, agent_name: str) -> bytes:
        """The id of ``agent_name``'s sub-agent node, recorded on first use (any thread)."""
        node = self._agents.get(agent_name)
        if node is not None:
            return node
        with self._lock:
            node = self._agents.get(agent_name)
            if node is None:
                if self.closed:  # a straggler after the step ended: keep it on the step
                    return self.id
                node = new_id()
                self.graph.tracker.record(records.node(
                    "start", self.scope, node, status="running", name=agent_name,
                    node_type=SUB_AGENT, parent_node=self.id, depth=1, agent=agent_name,
                    order_index=len(self._agents)))
                self._agents[agent_name] = node
                self.graph.tracker.work_nodes[node] = self
        return node

    def attempt(self, **meta: Any) -> SpanScope:
        """``with``/``async with`` one attempt at this node's work; ``failed`` if it raises."""
        self._attempts += 1
        return self.graph.tracker.span(WORKFLOW, subtype="attempt",
                                       meta={"attempt": self._attempts, **meta}, scope=self.scope)

    def start_attempt(self, **meta: Any) -> Span:
        """One attempt at this node's work, as an open span the caller ends."""
        self._attempts += 1
        return self.graph.tracker.start_span(WORKFLOW, subtype="attempt",
                                             meta={"attempt": self._attempts, **meta},
                                             scope=self.scope)

    def close(self, status: str = "completed", error: str | None = None, **meta: Any) -> None:
        """End the node and its sub-agent nodes with ``status``; ``meta`` is merged into its own.

        A second call does nothing.
        """
        with self._lock:
            if self.closed:
                return
            self.status = status
            agents = list(self._agents.values())
        tracker = self.graph.tracker
        for node in (self.id, *agents):
            tracker.work_nodes.pop(node, None)
        for node in agents:
            tracker.record(records.node("end", self.scope, node, status=status))
        if self._attempts:
            meta["attempts"] = self._attempts
        tracker.end_span(self._span, status=status, error=error, meta=meta or None)
        tracker.record(records.node("end", self.scope, self.id, status=status, error=error,
                                   meta=meta or None))
        self.graph.forget(self)

    def __enter__(self) -> Node:
        self._token = CURRENT.set(self.scope)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._token is not None:
            CURRENT.reset(self._token)
            self._token = None
        self.close("failed" if exc is not None else "completed", error=_describe(exc))

    async def __aenter__(self) -> Node:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        return f"<Node {self.name} {self.node_type} {self.status} {self.uuid}>"


# --- one run's graph ---------------------------------------------------------------------------


class Graph:
    """One run's DAG: its depth-0 nodes in order, the edges between them, steps and redos."""

    def __init__(self, graphs: Graphs, base: Scope) -> None:
        self.graphs = graphs
        self.tracker = graphs.tracker
        #: The run's own scope (no node, no span).
        self.base = base
        self.phase_node: Node | None = None
        #: Step number → its latest node (after a redo, the retry).
        self.steps: dict[int, Node] = {}
        self._redos: dict[int, int] = {}
        self._open: dict[bytes, Node] = {}
        self._order = itertools.count()
        #: The last depth-0 node on the path taken: the next node's edge starts there.
        self._tail: bytes | None = None
        self._lock = threading.Lock()

    # -- public: what a workflow records --

    def phase(self, name: str, **meta: Any) -> Node:
        """Open a phase node (``planning``, ``control``, ...)."""
        node = self._open_node(name, PHASE, None, {"phase": name, **meta})
        self.phase_node = node
        return node

    def step(self, number: int, goal: str | None = None, **meta: Any) -> Node:
        """Open step ``number``'s node; a step runs once, then only through :meth:`redo`."""
        previous = self.steps.get(number)
        if previous is not None:
            state = "is running" if not previous.closed else "already ran"
            raise WorkflowError(
                f"step {number} {state} in this run; to run it again, record a redo with "
                f"run.redo({number}, hypothesis) (CMBAgent: create_redo_branch)")
        node = self._open_node(f"step_{number}", STEP, number,
                               {"step": number, "goal": goal, **self._phase_meta(), **meta})
        self.steps[number] = node
        return node

    def redo(self, step_number: int, hypothesis: str | None, *, redo_number: int | None = None,
             max_redos: int | None = None, **meta: Any) -> Node:
        """Branch step ``step_number`` for a redo and open the retry's node (the new current
        node of that step). Past ``max_redos`` the request is recorded as refused, the step's
        last result as force-accepted, and :class:`MaxRedosExceeded` is raised."""
        source = self.steps.get(step_number)
        if source is None:
            raise WorkflowError(
                f"step {step_number} has not run in this run, so it cannot be redone; "
                f"record it first with run.step({step_number}, goal) (CMBAgent: on_step_start)")
        done = self._redos.get(step_number, 0)
        number = done + 1 if redo_number is None else redo_number
        if number != done + 1:
            raise WorkflowError(f"step {step_number} has had {done} redo(s), so the next is "
                                f"redo {done + 1}, not redo {number}")
        try:
            check_redo_allowed(step_number, number, max_redos)
        except MaxRedosExceeded as exc:
            self._refuse(source, exc, hypothesis)
            raise
        branch_name = f"redo_{number}"
        source.close("completed", redo_requested=branch_name)  # no-op if it already ended
        branch = self._branch_point(source, branch_name, hypothesis, number)
        retry = self._open_node(
            f"step_{step_number}_retry_{number}", STEP, step_number,
            {"step": step_number, "redo": number, "hypothesis": hypothesis,
             "retry_of": str(source.uuid), **self._phase_meta(), **meta},
            parent_scope=source.parent_scope, edge_from=branch)
        self.steps[step_number] = retry
        self._redos[step_number] = number
        return retry

    def skip(self, step_number: int, goal: str | None = None, reason: str | None = None) -> None:
        """Record step ``step_number`` as skipped (its running node, or a new one)."""
        node = self.steps.get(step_number) or self.step(step_number, goal)
        self.tracker.event(WORKFLOW, subtype="step_skipped", status="skipped",
                           inputs={"step": step_number, "reason": reason}, scope=node.scope)
        node.close("skipped", reason=reason)

    def close(self, status: str) -> None:
        """Close every node still open (innermost first) with ``status``; the run is over."""
        for node in reversed(list(self._open.values())):
            node.close(status)
        self.graphs.forget(self)

    def forget(self, node: Node) -> None:
        self._open.pop(node.id, None)
        if self.phase_node is node:
            self.phase_node = None

    # -- internals --

    def current_scope(self) -> Scope:
        """The current scope if it is in this run, else the run's own."""
        current = CURRENT.get()
        return current if current is not None and current.run == self.base.run else self.base

    def _phase_meta(self) -> dict[str, Any]:
        return {"phase": self.phase_node.name} if self.phase_node is not None else {}

    def _next(self, node_id: bytes, edge_from: bytes | None) -> tuple[int, bytes | None]:
        """This node's order index and the node its edge comes from; it becomes the tail."""
        with self._lock:
            source = self._tail if edge_from is None else edge_from
            self._tail = node_id
            return next(self._order), source

    def _open_node(self, name: str, node_type: str, number: int | None, meta: dict[str, Any],
                   parent_scope: Scope | None = None, edge_from: bytes | None = None) -> Node:
        node_id = new_id()
        parent = parent_scope or self.current_scope()
        order, source = self._next(node_id, edge_from)
        self.tracker.record(records.node("start", self.base, node_id, status="running", name=name,
                                        node_type=node_type, depth=0, order_index=order,
                                        meta=meta))
        if source is not None:
            self.tracker.record(records.edge(self.base, source, node_id))
        node = Node(self, node_id, name, node_type, parent, number, parent.at_node(node_id))
        self._open[node_id] = node
        self.tracker.work_nodes[node_id] = node
        return node

    def _branch_point(self, source: Node, branch_name: str, hypothesis: str | None,
                      number: int) -> bytes:
        branch = new_id()
        order, _ = self._next(branch, source.id)
        self.tracker.record(records.node(
            "point", self.base, branch, status="completed",
            name=f"step_{source.number}_{branch_name}", node_type=BRANCH_POINT, depth=0,
            order_index=order, meta={"branch_name": branch_name, "hypothesis": hypothesis,
                                     "source_node_id": str(source.uuid), "step": source.number,
                                     "redo": number}))
        self.tracker.record(records.edge(self.base, source.id, branch, "conditional", branch_name))
        self.tracker.event(WORKFLOW, subtype="redo_requested", inputs={"hypothesis": hypothesis},
                           meta={"step": source.number, "branch_name": branch_name},
                           scope=source.parent_scope.at_node(branch))
        return branch

    def _refuse(self, source: Node, exc: MaxRedosExceeded, hypothesis: str | None) -> None:
        meta = {"step": exc.step_number, "redo": exc.redo_number, "max_redos": exc.max_redos,
                "forced_acceptance": True}
        self.tracker.event(WORKFLOW, subtype="max_redos_reached", status="failed",
                           inputs={"hypothesis": hypothesis}, meta=meta, error=str(exc),
                           scope=source.parent_scope.at_node(source.id))
        self.tracker.record(records.node("point", self.base, source.id, meta=meta))


class Graphs:
    """A tracker's graphs of its open runs, by run id."""

    def __init__(self, tracker: Recorder) -> None:
        self.tracker = tracker
        self._graphs: dict[bytes, Graph] = {}
        self._lock = threading.Lock()

    def of(self, scope: Scope) -> Graph:
        """The graph of ``scope``'s run, made on first use."""
        graph = self._graphs.get(scope.run)
        if graph is None:
            with self._lock:
                graph = self._graphs.get(scope.run)
                if graph is None:
                    graph = self._graphs[scope.run] = Graph(self, Scope(scope.run, scope.session))
        return graph

    def close(self, run: bytes, status: str) -> None:
        """Close the nodes still open in ``run``'s graph, if it has one."""
        graph = self._graphs.get(run)
        if graph is not None:
            graph.close(status)

    def forget(self, graph: Graph) -> None:
        self._graphs.pop(graph.base.run, None)


# --- runs ------------------------------------------------------------------------------------


class RunScope:
    """One workflow run: ``with``/``async with tracker.run(task) as run``.

    A new session unless one is given (``CMBAGENT_SESSION_ID``) or the run is nested in another
    (same session). In a worker process with ``CMBAGENT_RUN_ID`` set it joins its parent's run
    instead: no new run is recorded and the parent's run is left for the parent to end.
    """

    def __init__(self, graphs: Graphs, task: str | None, meta: dict[str, Any]) -> None:
        tracker = graphs.tracker
        settings = tracker.settings
        self.graphs = graphs
        self.tracker = tracker
        self.task = task
        self.meta = meta
        self.joined = settings.run_id is not None
        self.id: bytes = settings.run_id or new_id()
        self.session_id: bytes | None = settings.session_id
        self.owns_session = False
        self.graph: Graph | None = None
        self._token: Token[Scope | None] | None = None

    @property
    def uuid(self) -> uuid.UUID:
        return uuid.UUID(bytes=self.id)

    def __enter__(self) -> RunScope:

        outer = CURRENT.get()
        if not self.joined:
            self.session_id = self.session_id or (outer.session if outer else None)
            if self.session_id is None:
                self.session_id = self.tracker.open_session(name=self.task)
                self.owns_session = True
        scope = Scope(run=self.id, session=self.session_id)
        if not self.joined:
            self.tracker.record(records.run_start(scope, self.task, self.meta))
        self.graph = self.graphs.of(scope)
        self._token = CURRENT.set(scope)
        return self

    def close(self, status: str = "completed", error: str | None = None) -> None:
        """End the run (and any node still open, and the session it opened) with ``status``."""

        if self._token is not None:
            try:
                CURRENT.reset(self._token)
            except ValueError:  # ended from another context (a callback on another thread)
                pass
            self._token = None
        if self.graph is not None:
            self.graph.close(status)
            self.graph = None
            if not self.joined:
                self.tracker.record(records.run_end(Scope(self.id, self.session_id), status, error))
            if self.owns_session and self.session_id is not None:
                self.tracker.end_session(self.session_id, status)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close("failed" if exc is not None else "completed", _describe(exc))

    async def __aenter__(self) -> RunScope:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)

    # -- the workflow inside (see Graph) --

    def phase(self, name: str, **meta: Any) -> Node:
        """A phase node: ``with run.phase("planning"):``."""
        return self._graph().phase(name, **meta)

    def step(self, number: int, goal: str | None = None, **meta: Any) -> Node:
        """Step ``number``'s node: ``with run.step(1, "Fit the spectrum") as step:``."""
        return self._graph().step(number, goal, **meta)

    def redo(self, step_number: int, hypothesis: str | None, *, redo_number: int | None = None,
             max_redos: int | None = None, **meta: Any) -> Node:
        """A redo of a step: ``with run.redo(3, "use a wider prior") as retry:``."""
        return self._graph().redo(step_number, hypothesis, redo_number=redo_number,
                                  max_redos=max_redos, **meta)

    def skip(self, step_number: int, goal: str | None = None, reason: str | None = None) -> None:
        """Record a step as skipped."""
        self._graph().skip(step_number, goal, reason)

    def _graph(self) -> Graph:
        if self.graph is None:
            raise WorkflowError("the run is not open: use `with tracker.run(task) as run:` "
                                "and record phases and steps inside the block")
        return self.graph

