"""The record format: every record the shim sends is built here, and nowhere else.

Wire version 2 (see :mod:`agent_shim.wire`): a record is a map with ``k``, its kind, and
otherwise exactly the column names of the kind's table in ``collector/tables.py``. Times are
integer microseconds since the epoch, each in its own column: a span's start says
``started_at``, its end ``completed_at``; every event and cost says ``timestamp``. A field left
``None`` says nothing: the stored row keeps what another record of it said (the collector's
merge rules).

Payloads (``inputs``, ``outputs``, ``meta``) are snapshotted here, on the caller's thread, so a
value the program changes later is recorded as it was.
"""

from __future__ import annotations

from typing import Any, Literal

from .context import Scope
from .payload import snapshot, thaw
from .wire import new_id, now_us

Record = dict[str, Any]

#: What a node record says of the node's time: it started, it ended, or neither.
NodeMoment = Literal["start", "end", "point"]


def session(session_id: bytes, *, name: str | None, status: str, meta: Any = None) -> Record:
    return {"k": "session", "id": session_id, "name": name, "status": status,
            "meta": snapshot(meta), "created_at": now_us()}


def run_start(scope: Scope, task: str | None, meta: Any) -> Record:
    return {"k": "run", "id": scope.run, "session_id": scope.session,
            "task_description": task, "status": "running", "meta": snapshot(meta),
            "started_at": now_us()}


def run_end(scope: Scope, status: str, error: str | None, meta: Any = None) -> Record:
    return {"k": "run", "id": scope.run, "session_id": scope.session, "status": status,
            "error_message": error, "meta": snapshot(meta), "completed_at": now_us()}


def node(moment: NodeMoment, scope: Scope, node_id: bytes, *, status: str | None = None,
         name: str | None = None, node_type: str | None = None, parent_node: bytes | None = None,
         depth: int | None = None, agent: str | None = None, order_index: int | None = None,
         error: str | None = None, meta: Any = None) -> Record:
    record = {"k": "node", "id": node_id, "run_id": scope.run, "session_id": scope.session,
              "name": name, "node_type": node_type, "parent_node_id": parent_node,
              "depth": depth, "agent": agent, "order_index": order_index, "status": status,
              "error_message": error, "meta": snapshot(meta)}
    if moment != "point":
        record["started_at" if moment == "start" else "completed_at"] = now_us()
    return record


def edge(scope: Scope, source: bytes, target: bytes, dependency_type: str = "sequential",
         condition: str | None = None) -> Record:
    return {"k": "edge", "run_id": scope.run, "from_node_id": source, "to_node_id": target,
            "dependency_type": dependency_type, "condition": condition}


def event(scope: Scope, event_id: bytes, event_type: str, *, subtype: str | None,
          agent_name: str | None, status: str, inputs: Any, outputs: Any, meta: Any,
          error: str | None) -> Record:
    """A point event: something that happened at one moment."""
    return {"k": "event", "id": event_id, "run_id": scope.run, "session_id": scope.session,
            "node_id": scope.node, "parent_event_id": scope.span, "depth": scope.depth,
            "event_type": event_type, "event_subtype": subtype, "agent_name": agent_name,
            "status": status, "inputs": snapshot(inputs), "outputs": snapshot(outputs),
            "meta": snapshot(meta), "error_message": error, "timestamp": now_us()}


class Span:
    """An open span: what its start recorded and, once :meth:`end` is called, what its end
    records. The recorder hands the span itself to its sink at both moments; the sink makes
    the records (:func:`span_start`, :func:`span_end`, or :func:`span_whole` when the end
    comes before the start was taken), so the caller builds no record and a short span
    crosses the wire as one record. ``inner`` is the scope of everything inside it."""

    __slots__ = ("id", "scope", "inner", "event_type", "agent_name", "subtype", "inputs", "meta",
                 "started_at", "status", "outputs", "end_meta", "end_subtype", "error",
                 "completed_at", "holder", "claims")

    def __init__(self, scope: Scope, span_id: bytes, event_type: str, subtype: str | None,
                 agent_name: str | None, inputs: Any, meta: Any) -> None:
        self.id = span_id
        self.scope = scope
        self.inner = scope.child(span_id)
        self.event_type = event_type
        self.subtype = subtype
        self.agent_name = agent_name
        self.inputs = snapshot(inputs)
        self.meta = snapshot(meta)
        self.started_at = now_us()
        #: The sink's: who holds the queued start, and who claimed the span first (see
        #: ``agent_shim.sender``).
        self.holder: Any = None
        self.claims: list[object] = []

    def end(self, status: str, outputs: Any, meta: Any, subtype: str | None,
            error: str | None) -> None:
        """Say how the span ended (the caller then hands it to the sink again)."""
        self.status = status
        self.outputs = snapshot(outputs)
        self.end_meta = snapshot(meta)
        self.end_subtype = subtype
        self.error = error
        self.completed_at = now_us()

    def start_bytes(self) -> int:
        """The payload bytes its start holds (a queue's bound counts them)."""
        inputs, meta = self.inputs, self.meta
        return (len(inputs) if inputs else 0) + (len(meta) if meta else 0)

    def end_bytes(self) -> int:
        outputs, meta = self.outputs, self.end_meta
        return (len(outputs) if outputs else 0) + (len(meta) if meta else 0)


def span_start(span: Span) -> Record:
    scope, now = span.scope, span.started_at
    return {"k": "event", "id": span.id, "run_id": scope.run, "session_id": scope.session,
            "node_id": scope.node, "parent_event_id": scope.span, "depth": scope.depth,
            "event_type": span.event_type, "event_subtype": span.subtype,
            "agent_name": span.agent_name, "status": "running", "inputs": span.inputs,
            "meta": span.meta, "timestamp": now, "started_at": now}


def span_end(span: Span) -> Record:
    # ``timestamp`` too: the end may be stored before its start (the earliest time wins).
    scope, now = span.scope, span.completed_at
    return {"k": "event", "id": span.id, "run_id": scope.run, "session_id": scope.session,
            "event_type": span.event_type, "event_subtype": span.end_subtype,
            "status": span.status, "outputs": span.outputs, "meta": span.end_meta,
            "error_message": span.error, "timestamp": now, "completed_at": now}


def span_whole(span: Span) -> Record | None:
    """An ended span's start and end as one record, as the collector would merge them;
    ``None`` if their ``meta`` are not both maps (the two records are sent instead)."""
    meta: Any = span.meta
    if meta is None:
        meta = span.end_meta
    elif span.end_meta is not None:
        start, end = thaw(meta), thaw(span.end_meta)
        if not (isinstance(start, dict) and isinstance(end, dict)):
            return None
        meta = {**start, **end}  # the ``merge`` rule: the end's keys win
    record = span_start(span)
    subtype = span.end_subtype
    record.update(status=span.status, outputs=span.outputs, meta=meta,
                  error_message=span.error, completed_at=span.completed_at)
    if subtype is not None:
        record["event_subtype"] = subtype
    return record


def cost(scope: Scope, *, model: str | None, agent_name: str | None, prompt_tokens: int | None,
         completion_tokens: int | None, total_tokens: int | None, cost_usd: float | None,
         event_id: bytes | None) -> Record:
    return {"k": "cost", "id": new_id(), "run_id": scope.run, "session_id": scope.session,
            "node_id": scope.node, "event_id": event_id, "model": model,
            "agent_name": agent_name, "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens, "total_tokens": total_tokens,
            "cost_usd": cost_usd, "timestamp": now_us()}


def moment(record: Record) -> NodeMoment:
    """What a run, node or event record says of its time (tests and tools read records so)."""
    if record.get("started_at") is not None:
        return "start"
    return "end" if record.get("completed_at") is not None else "point"
