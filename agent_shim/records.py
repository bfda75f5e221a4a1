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
from .payload import snapshot
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


def span_start(scope: Scope, span_id: bytes, event_type: str, *, subtype: str | None,
               agent_name: str | None, inputs: Any, meta: Any) -> Record:
    now = now_us()
    return {"k": "event", "id": span_id, "run_id": scope.run, "session_id": scope.session,
            "node_id": scope.node, "parent_event_id": scope.span, "depth": scope.depth,
            "event_type": event_type, "event_subtype": subtype, "agent_name": agent_name,
            "status": "running", "inputs": snapshot(inputs), "meta": snapshot(meta),
            "timestamp": now, "started_at": now}


def span_end(scope: Scope, span_id: bytes, event_type: str, *, subtype: str | None,
             status: str, outputs: Any, meta: Any, error: str | None) -> Record:
    # ``timestamp`` too: the end may be stored before its start (the earliest time wins).
    now = now_us()
    return {"k": "event", "id": span_id, "run_id": scope.run, "session_id": scope.session,
            "event_type": event_type, "event_subtype": subtype, "status": status,
            "outputs": snapshot(outputs), "meta": snapshot(meta), "error_message": error,
            "timestamp": now, "completed_at": now}


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
