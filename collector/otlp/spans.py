"""A stored run as OTLP spans: the run, its DAG nodes and its events, one span each.

- The trace id is the run id; a span's id is a hash of its row's id, so exporting twice sends the
  same spans and a backend that keys spans by id stores them once.
- Parents: an event's enclosing event, else its node, else the run; a node's parent node, else
  the run. A redo's retry links to the failed attempt; every DAG edge is a link into its node.
- Spans still open (``running``, ``pending``) are left out: they are exported when they end.
- Message content (events' inputs and outputs) only with ``content=True``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from . import convention as c

Row = Mapping[str, Any]
OPEN = frozenset({"running", "pending"})
AGENT_KIND, CHAIN, LLM, TOOL = "AGENT", "CHAIN", "LLM", "TOOL"


@dataclass
class StoredRun:
    """One run's rows, as the database returns them."""

    run: Row
    session: Row | None
    nodes: list[Row] = field(default_factory=list)
    edges: list[Row] = field(default_factory=list)
    events: list[Row] = field(default_factory=list)
    costs: list[Row] = field(default_factory=list)


def run_spans(stored: StoredRun, *, content: bool = False) -> list[Span]:
    """Every ended span of the run, parents before children where the store ordered them so."""
    return _Mapper(stored, content).spans()


class _Mapper:
    def __init__(self, stored: StoredRun, content: bool) -> None:
        self.stored = stored
        self.content = content
        run = stored.run
        self.trace_id = run["id"].bytes
        self.root = c.span_id(run["id"])
        self.known = {n["id"] for n in stored.nodes} | {e["id"] for e in stored.events}
        self.session = str(run["session_id"])
        # An LLM call's cost goes on its span; any other cost gets a span of its own.
        self.costs: dict[uuid.UUID, Row] = {}
        self.loose_costs: list[Row] = []
        for cost in stored.costs:
            if cost["event_id"] and cost["event_id"] not in self.costs:
                self.costs[cost["event_id"]] = cost
            else:
                self.loose_costs.append(cost)
        # A node without times of its own (a branch point) is placed at its first event.
        self.first_event: dict[uuid.UUID, datetime] = {}
        for event in stored.events:
            self.first_event.setdefault(event["node_id"], event["timestamp"])
        self.edges_into: dict[uuid.UUID, list[Row]] = {}
        for edge in stored.edges:
            self.edges_into.setdefault(edge["to_node_id"], []).append(edge)

    def spans(self) -> list[Span]:
        stored = self.stored
        spans = [] if stored.run["status"] in OPEN else [self._run()]
        spans += [self._node(n) for n in stored.nodes if n["status"] not in OPEN]
        spans += [self._event(e) for e in stored.events if e["status"] not in OPEN]
        spans += [self._loose_cost(cost) for cost in self.loose_costs]
        return spans

    # --- one span per row -----------------------------------------------------------------

    def _run(self) -> Span:
        run, session = self.stored.run, self.stored.session
        start = self._run_start()
        return self._span(
            run["id"], None, "invoke_workflow", start, run["completed_at"] or start,
            run["status"], run["error_message"], Span.SPAN_KIND_INTERNAL, {
                c.OPERATION: "invoke_workflow", c.SPAN_KIND: CHAIN, c.RECORD: "run",
                c.TASK: run["task_description"], c.META: _json(run["meta"]),
                c.SESSION_NAME: session["name"] if session else None,
                **self._input(run["task_description"]),
            })

    def _run_start(self) -> datetime:
        run = self.stored.run
        started: datetime = run["started_at"] or min(
            (e["timestamp"] for e in self.stored.events), default=run["completed_at"])
        return started

    def _node(self, node: Row) -> Span:
        kind, operation, name = CHAIN, None, node["name"] or node["node_type"]
        if node["node_type"] == "sub_agent":
            kind, operation, name = AGENT_KIND, "invoke_agent", f"invoke_agent {node['agent']}"
        elif node["node_type"] == "phase" and "plan" in (node["name"] or ""):
            operation, name = "plan", "plan"
        start = (node["started_at"] or node["completed_at"] or self.first_event.get(node["id"])
                 or self._run_start())
        span = self._span(
            node["id"], self._known(node["parent_node_id"]), name, start,
            node["completed_at"] or start,
            node["status"], node["error_message"], Span.SPAN_KIND_INTERNAL, {
                c.OPERATION: operation, c.SPAN_KIND: kind, c.RECORD: "node",
                c.NODE_TYPE: node["node_type"], c.NAME: node["name"], c.AGENT: node["agent"],
                c.AGENT_NAME: node["agent"], c.OI_AGENT: node["agent"],
                c.PARENT_NODE: _text(node["parent_node_id"]), c.ORDER_INDEX: node["order_index"],
                c.DEPTH: node["depth"], c.META: _json(node["meta"]),
                c.POINT: True if node["started_at"] is None else None,
            })
        for edge in self.edges_into.get(node["id"], ()):
            self._link(span, edge["from_node_id"], {
                c.LINK: "edge", c.ID: str(edge["from_node_id"]),
                c.DEPENDENCY: edge["dependency_type"],
                c.CONDITION: edge["condition"]})
        retry_of = _json(node["meta"]).get("retry_of")
        if retry_of:
            self._link(span, uuid.UUID(retry_of), {c.LINK: "retry_of", c.ID: retry_of})
        return span

    def _event(self, event: Row) -> Span:
        meta = _json(event["meta"])
        attributes, name, kind = self._event_kind(event, meta)
        start = event["started_at"] or event["timestamp"]
        parent = self._known(event["parent_event_id"]) or self._known(event["node_id"])
        return self._span(
            event["id"], parent, name, start, event["completed_at"] or start, event["status"],
            event["error_message"], kind, {
                **attributes, c.RECORD: "event", c.EVENT_TYPE: event["event_type"],
                c.EVENT_SUBTYPE: event["event_subtype"], c.AGENT: event["agent_name"],
                c.NODE: _text(event["node_id"]), c.PARENT_EVENT: _text(event["parent_event_id"]),
                c.DEPTH: event["depth"], c.META: meta,
                c.POINT: True if event["started_at"] is None else None,
                **self._cost(self.costs.get(event["id"])),
                **self._content(event),
            })

    def _loose_cost(self, cost: Row) -> Span:
        """A cost outside any event (or an event's second): a point LLM span under its event,
        else its node, else the run."""
        model = cost["model"] or "unknown"
        return self._span(
            cost["id"], self._known(cost["event_id"]) or self._known(cost["node_id"]),
            f"chat {model}", cost["timestamp"], cost["timestamp"],
            "completed", None, Span.SPAN_KIND_CLIENT, {
                c.OPERATION: "chat", c.SPAN_KIND: LLM, c.RECORD: "cost", c.POINT: True,
                **self._cost(cost)})

    def _event_kind(self, event: Row, meta: dict[str, Any]
                    ) -> tuple[dict[str, Any], str, Span.SpanKind.ValueType]:
        """The conventions' attributes, span name and span kind of one event type."""
        event_type, agent = event["event_type"], event["agent_name"]
        base = {c.AGENT_NAME: agent, c.OI_AGENT: agent}
        if event_type == "agent_call":
            return ({**base, c.OPERATION: "invoke_agent", c.SPAN_KIND: AGENT_KIND},
                    f"invoke_agent {agent}", Span.SPAN_KIND_INTERNAL)
        if event_type == "llm_call":
            cost = self.costs.get(event["id"])
            model = (cost["model"] if cost else None) or meta.get("model") or "unknown"
            return ({**base, c.OPERATION: "chat", c.SPAN_KIND: LLM, c.REQUEST_MODEL: model,
                     c.OI_MODEL: model}, f"chat {model}", Span.SPAN_KIND_CLIENT)
        if event_type in ("tool_call", "code_exec"):
            tool = _tool_name(event, meta)
            return ({**base, c.OPERATION: "execute_tool", c.SPAN_KIND: TOOL, c.TOOL_NAME: tool,
                     c.OI_TOOL: tool, c.TOOL_TYPE: "function" if event_type == "tool_call"
                     else "extension"}, f"execute_tool {tool}", Span.SPAN_KIND_INTERNAL)
        if event_type == "handoff":
            target = _handoff_target(event, meta)
            tool = f"transfer_to_{target}"
            return ({**base, c.OPERATION: "execute_tool", c.SPAN_KIND: TOOL, c.TOOL_NAME: tool,
                     c.OI_TOOL: tool, c.TRANSFER_FROM: agent, c.TRANSFER_TO: target},
                    f"execute_tool {tool}", Span.SPAN_KIND_INTERNAL)
        subtype = event["event_subtype"]
        name = f"{event_type} {subtype}" if subtype else event_type
        return {**base, c.SPAN_KIND: CHAIN}, name, Span.SPAN_KIND_INTERNAL

    # --- pieces -------------------------------------------------------------------------------

    def _known(self, key: uuid.UUID | None) -> uuid.UUID | None:
        """``key`` if this run has that node or event, else ``None`` (the run is the parent)."""
        return key if key in self.known else None

    def _span(self, key: uuid.UUID, parent: uuid.UUID | None, name: str, start: datetime,
              end: datetime, status: str, error: str | None, kind: Span.SpanKind.ValueType,
              attributes: dict[str, Any]) -> Span:
        span = Span(
            trace_id=self.trace_id, span_id=c.span_id(key), name=name, kind=kind,
            parent_span_id=c.span_id(parent) if parent else self.root,
            start_time_unix_nano=_nanos(start), end_time_unix_nano=_nanos(end),
            attributes=c.key_values({
                **attributes, c.ID: str(key), c.STATUS: status, c.SESSION: self.session,
                c.CONVERSATION: self.session}),
            status=_status(status, error))
        if parent is None and key == self.stored.run["id"]:
            span.ClearField("parent_span_id")
        return span

    def _link(self, span: Span, target: uuid.UUID, attributes: dict[str, Any]) -> None:
        link = span.links.add(trace_id=self.trace_id, span_id=c.span_id(target))
        link.attributes.extend(c.key_values(attributes))

    def _cost(self, cost: Row | None) -> dict[str, Any]:
        if cost is None:
            return {}
        value = float(cost["cost_usd"]) if cost["cost_usd"] is not None else None
        return {
            c.COST_ID: str(cost["id"]), c.COST_NODE: _text(cost["node_id"]),
            c.COST_EVENT: _text(cost["event_id"]),
            c.COST_AGENT: cost["agent_name"], c.COST_TIME: _micros(cost["timestamp"]),
            c.REQUEST_MODEL: cost["model"],
            c.OI_MODEL: cost["model"],
            c.INPUT_TOKENS: cost["prompt_tokens"], c.OUTPUT_TOKENS: cost["completion_tokens"],
            c.OI_PROMPT_TOKENS: cost["prompt_tokens"],
            c.OI_COMPLETION_TOKENS: cost["completion_tokens"],
            c.OI_TOTAL_TOKENS: cost["total_tokens"], c.TOTAL_TOKENS: cost["total_tokens"],
            c.USAGE_COST: value, c.OI_COST: value,
        }

    def _content(self, event: Row) -> dict[str, Any]:
        if not self.content:
            return {}
        inputs, outputs = event["inputs"], event["outputs"]
        return {**_json_content(c.INPUT_VALUE, c.INPUT_MIME, inputs),
                **_json_content(c.OUTPUT_VALUE, c.OUTPUT_MIME, outputs)}

    def _input(self, text: str | None) -> dict[str, Any]:
        return {c.INPUT_VALUE: text} if self.content and text else {}


def _json_content(key: str, mime_key: str, value: Any) -> dict[str, Any]:
    """A jsonb column as ``input.value`` / ``output.value``: JSON text, said to be JSON."""
    if value is None:
        return {}
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return {key: text, mime_key: c.JSON_MIME}


def _tool_name(event: Row, meta: dict[str, Any]) -> str:
    if event["event_type"] == "code_exec":
        return str(meta.get("language") or _json(event["inputs"]).get("language") or "code")
    inputs = _json(event["inputs"])
    return str(meta.get("tool") or inputs.get("name") or inputs.get("tool") or
               event["event_subtype"] or "tool")


def _handoff_target(event: Row, meta: dict[str, Any]) -> str:
    for source in (meta, _json(event["outputs"]), _json(event["inputs"])):
        for key in ("to", "target", "next_agent", "speaker"):
            if isinstance(source.get(key), str):
                return str(source[key])
    return "agent"


def _json(value: Any) -> dict[str, Any]:
    """A jsonb column as a dict (asyncpg returns jsonb as text)."""
    if isinstance(value, str):
        value = json.loads(value)
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _micros(moment: datetime) -> int:
    # Integer arithmetic: a float's 53 bits lose the microseconds of today's epoch nanoseconds.
    delta = moment - datetime(1970, 1, 1, tzinfo=moment.tzinfo)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _nanos(moment: datetime) -> int:
    return _micros(moment) * 1000


def _status(status: str, error: str | None) -> Status:
    if status == "failed":
        return Status(code=Status.STATUS_CODE_ERROR, message=error or "")
    if status == "completed":
        return Status(code=Status.STATUS_CODE_OK)
    return Status()
