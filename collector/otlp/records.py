"""OTLP spans back into the pipeline's records, so that ingest validates, quarantines and merges
exactly as for ZeroMQ frames (``pipeline.to_row``, then the store).

- Spans we exported carry ``cmbagent.*`` attributes: the run, nodes, edges, events and costs
  come back with their own ids and columns.
- Any other span (AG2's telemetry, a GenAI or OpenInference instrumentor): its trace is a run,
  the span an event whose parent is its parent span, typed by ``gen_ai.operation.name`` or
  ``openinference.span.kind``; an ``invoke_agent`` span also makes a ``sub_agent`` node, which
  holds the spans under it that arrive in the same request; token usage makes a cost record.
  Ids derive from (trace id, span id), so sending a span again changes nothing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from . import convention as c

Record = dict[str, Any]

_OPERATIONS = {"invoke_agent": "agent_call", "create_agent": "agent_call", "chat": "llm_call",
               "text_completion": "llm_call", "generate_content": "llm_call",
               "embeddings": "llm_call", "execute_tool": "tool_call"}
_KINDS = {"AGENT": "agent_call", "LLM": "llm_call", "TOOL": "tool_call", "EMBEDDING": "llm_call"}


class BadSpan(ValueError):
    """A span that cannot become records; it is quarantined with this message."""


def spans(request: ExportTraceServiceRequest) -> Iterator[tuple[Span, dict[str, Any]]]:
    """Each span with its resource's attributes."""
    for resource_spans in request.resource_spans:
        resource = c.attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield span, resource


def span_records(span: Span, resource: dict[str, Any], agents: dict[bytes, uuid.UUID]
                 ) -> list[Record]:
    """The records one span stands for. ``agents`` maps the span ids of this request's
    ``invoke_agent`` spans to their nodes (see :func:`agent_nodes`)."""
    if len(span.trace_id) != 16 or not any(span.trace_id):
        raise BadSpan(f"trace_id must be 16 bytes, not all zero (got {span.trace_id.hex()!r})")
    if len(span.span_id) != 8 or not any(span.span_id):
        raise BadSpan(f"span_id must be 8 bytes, not all zero (got {span.span_id.hex()!r})")
    if not 0 < span.start_time_unix_nano <= span.end_time_unix_nano:
        raise BadSpan(f"span {span.span_id.hex()} ({span.name!r}): its times must be after 1970 "
                      "and end at or after its start")
    attributes = c.attributes(span.attributes)
    try:
        if c.RECORD in attributes:
            return _OwnSpan(span, attributes).records()
        return _ForeignSpan(span, attributes, resource, agents).records()
    except (ValueError, TypeError, KeyError) as exc:
        raise BadSpan(f"span {span.span_id.hex()} ({span.name!r}): {type(exc).__name__}: {exc}"
                      ) from None


def agent_nodes(request: ExportTraceServiceRequest) -> dict[bytes, uuid.UUID]:
    """Span id → sub-agent node for every span of the request at or under an ``invoke_agent``
    span of the request (foreign spans only: ours name their node)."""
    parents: dict[bytes, bytes] = {}
    nodes: dict[bytes, uuid.UUID] = {}
    for span, _ in spans(request):
        parents[span.span_id] = span.parent_span_id
        attributes = c.attributes(span.attributes)
        if c.RECORD not in attributes and _is_agent(attributes):
            nodes[span.span_id] = c.foreign_id(span.trace_id, span.span_id, b"node")
    resolved: dict[bytes, uuid.UUID] = {}
    for span_id in parents:
        seen = span_id
        for _ in range(len(parents)):  # bounded: a cycle of parents cannot loop forever
            if seen in nodes:
                resolved[span_id] = nodes[seen]
                break
            seen = parents.get(seen, b"")
            if not seen:
                break
    return resolved


def _is_agent(attributes: dict[str, Any]) -> bool:
    return (attributes.get(c.OPERATION) == "invoke_agent"
            or attributes.get(c.SPAN_KIND) == "AGENT")


def _micros(nanos: int) -> int:
    return nanos // 1000


def _uuid(value: Any) -> bytes | None:
    return None if value in (None, "") else uuid.UUID(str(value)).bytes


def _content(attributes: dict[str, Any], key: str, mime_key: str) -> Any:
    """``input.value`` / ``output.value``: parsed when its mime type says JSON, else as given."""
    value = attributes.get(key)
    if isinstance(value, str) and attributes.get(mime_key) == c.JSON_MIME:
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _status(span: Span) -> tuple[str, str | None]:
    if span.status.code == Status.STATUS_CODE_ERROR:
        return "failed", span.status.message or "error"
    return "completed", None


def _timed(record: Record, span: Span, point: bool, final: Record,
           timestamped: bool = False) -> list[Record]:
    """A row as a start and an end record (or one point record) at the span's times;
    ``timestamped``: the table has a ``timestamp`` column (events), set on each."""
    start, end = _micros(span.start_time_unix_nano), _micros(span.end_time_unix_nano)
    if point:
        return [{**record, **final, **_stamp(timestamped, start)}]
    return [{**record, "started_at": start, **_stamp(timestamped, start)},
            {**record, **final, "completed_at": end, **_stamp(timestamped, end)}]


def _stamp(timestamped: bool, at: int) -> Record:
    return {"timestamp": at} if timestamped else {}


class _OwnSpan:
    """A span that ``spans`` made: every column is in its ``cmbagent.*`` attributes."""

    def __init__(self, span: Span, attributes: dict[str, Any]) -> None:
        self.span = span
        self.a = attributes
        self.run = span.trace_id
        self.session = _uuid(attributes[c.SESSION])

    def records(self) -> list[Record]:
        kind = self.a[c.RECORD]
        if kind == "run":
            return self._run()
        if kind == "node":
            return self._node()
        if kind == "event":
            return self._event() + self._cost()
        if kind == "cost":
            return self._cost()
        raise ValueError(f"{c.RECORD} {kind!r} is none of run, node, event, cost")

    def _base(self) -> Record:
        return {"run_id": self.run, "id": _uuid(self.a[c.ID]), "session_id": self.session}

    def _meta(self) -> Any:
        meta = self.a.get(c.META)
        return json.loads(meta) if isinstance(meta, str) else meta

    def _final(self) -> Record:
        return {"status": self.a.get(c.STATUS),
                "error_message": self.span.status.message or None}

    def _run(self) -> list[Record]:
        a = self.a
        session = {"k": "session", "id": self.session, "name": a.get(c.SESSION_NAME),
                   "created_at": _micros(self.span.start_time_unix_nano)}
        run = {"k": "run", "id": self.run, "session_id": self.session,
               "task_description": a.get(c.TASK), "meta": self._meta()}
        return [session, *_timed(run, self.span, False, self._final())]

    def _node(self) -> list[Record]:
        a = self.a
        node = {**self._base(), "k": "node", "parent_node_id": _uuid(a.get(c.PARENT_NODE)),
                "depth": a.get(c.DEPTH), "node_type": a.get(c.NODE_TYPE), "name": a.get(c.NAME),
                "agent": a.get(c.AGENT), "order_index": a.get(c.ORDER_INDEX),
                "meta": self._meta()}
        edges = []
        for link in self.span.links:
            link_attributes = c.attributes(link.attributes)
            if link_attributes.get(c.LINK) == "edge":
                edges.append({"k": "edge", "run_id": self.run,
                              "from_node_id": _uuid(link_attributes[c.ID]),
                              "to_node_id": node["id"],
                              "dependency_type": link_attributes.get(c.DEPENDENCY),
                              "condition": link_attributes.get(c.CONDITION)})
        return [*_timed(node, self.span, bool(a.get(c.POINT)), self._final()), *edges]

    def _event(self) -> list[Record]:
        a = self.a
        event = {**self._base(), "k": "event", "event_type": a.get(c.EVENT_TYPE),
                 "event_subtype": a.get(c.EVENT_SUBTYPE), "agent_name": a.get(c.AGENT),
                 "node_id": _uuid(a.get(c.NODE)), "parent_event_id": _uuid(a.get(c.PARENT_EVENT)),
                 "depth": a.get(c.DEPTH), "meta": self._meta(),
                 "inputs": _content(a, c.INPUT_VALUE, c.INPUT_MIME)}
        final = {**self._final(), "outputs": _content(a, c.OUTPUT_VALUE, c.OUTPUT_MIME)}
        return _timed(event, self.span, bool(a.get(c.POINT)), final, timestamped=True)

    def _cost(self) -> list[Record]:
        a = self.a
        if c.COST_ID not in a:
            return []
        return [{"k": "cost", "run_id": self.run, "id": _uuid(a[c.COST_ID]),
                 "session_id": self.session, "node_id": _uuid(a.get(c.COST_NODE)),
                 "event_id": _uuid(a.get(c.COST_EVENT)),
                 "model": a.get(c.REQUEST_MODEL), "agent_name": a.get(c.COST_AGENT),
                 "prompt_tokens": a.get(c.INPUT_TOKENS),
                 "completion_tokens": a.get(c.OUTPUT_TOKENS),
                 "total_tokens": a.get(c.TOTAL_TOKENS), "cost_usd": a.get(c.USAGE_COST),
                 "timestamp": a.get(c.COST_TIME)}]


class _ForeignSpan:
    """A span from another instrumentation: read through the GenAI and OpenInference names."""

    def __init__(self, span: Span, attributes: dict[str, Any], resource: dict[str, Any],
                 agents: dict[bytes, uuid.UUID]) -> None:
        self.span = span
        self.a = attributes
        self.resource = resource
        self.agents = agents
        self.run = span.trace_id
        self.session = self._session()

    def _session(self) -> bytes:
        given = self.a.get(c.SESSION) or self.a.get(c.CONVERSATION)
        if given is None:
            return c.foreign_id(self.run, b"", b"session").bytes
        try:
            return uuid.UUID(str(given)).bytes
        except ValueError:  # any text names a session; the same text, the same session
            return c.foreign_id(str(given).encode(), b"", b"session").bytes

    def records(self) -> list[Record]:
        span, a = self.span, self.a
        event_id = c.foreign_id(self.run, span.span_id).bytes
        agent = a.get(c.AGENT_NAME) or a.get(c.OI_AGENT)
        node = self.agents.get(span.span_id)
        status, error = _status(span)
        records = []
        if not span.parent_span_id:
            records += self._run(status, error)
        if node is not None and _is_agent(a):  # the span's own node
            records += self._agent_node(node, agent, status, error)
        event_type = self._event_type()
        event = {"k": "event", "run_id": self.run, "id": event_id, "session_id": self.session,
                 "event_type": event_type, "event_subtype": span.name, "agent_name": agent,
                 "node_id": node.bytes if node else None,
                 "parent_event_id": c.foreign_id(self.run, span.parent_span_id).bytes
                 if span.parent_span_id else None,
                 "inputs": _content(a, c.INPUT_VALUE, c.INPUT_MIME),
                 "meta": {"otlp": {"name": span.name, "attributes": a,
                                   "service": self.resource.get("service.name")}}}
        records += _timed(event, span, False, {"status": status, "error_message": error,
                                               "outputs": _content(a, c.OUTPUT_VALUE,
                                                                   c.OUTPUT_MIME)},
                          timestamped=True)
        if event_type != "llm_call":  # usage on agent or chat spans sums their LLM calls
            return records
        return records + self._cost(event_id, node, agent)

    def _event_type(self) -> str:
        operation = self.a.get(c.OPERATION)
        if operation == "execute_tool" and str(self.a.get(c.TOOL_NAME, "")).startswith(
                "transfer_to_"):
            return "handoff"
        return (_OPERATIONS.get(str(operation)) or _KINDS.get(str(self.a.get(c.SPAN_KIND)))
                or "span")

    def _run(self, status: str, error: str | None) -> list[Record]:
        session = {"k": "session", "id": self.session,
                   "created_at": _micros(self.span.start_time_unix_nano)}
        run = {"k": "run", "id": self.run, "session_id": self.session,
               "task_description": self.span.name,
               "meta": {"otlp": {"service": self.resource.get("service.name")}}}
        return [session, *_timed(run, self.span, False,
                                 {"status": status, "error_message": error})]

    def _agent_node(self, node: uuid.UUID, agent: str | None, status: str,
                    error: str | None) -> list[Record]:
        record = {"k": "node", "run_id": self.run, "id": node.bytes, "session_id": self.session,
                  "node_type": "sub_agent", "name": agent or self.span.name, "agent": agent,
                  "depth": 0}
        return _timed(record, self.span, False, {"status": status, "error_message": error})

    def _cost(self, event: bytes, node: uuid.UUID | None, agent: str | None) -> list[Record]:
        a = self.a
        prompt = a.get(c.INPUT_TOKENS, a.get(c.OI_PROMPT_TOKENS))
        completion = a.get(c.OUTPUT_TOKENS, a.get(c.OI_COMPLETION_TOKENS))
        if prompt is None and completion is None:
            return []
        total = a.get(c.OI_TOTAL_TOKENS)
        if total is None:
            total = (prompt or 0) + (completion or 0)
        return [{"k": "cost", "run_id": self.run,
                 "id": c.foreign_id(self.run, self.span.span_id, b"cost").bytes,
                 "session_id": self.session, "node_id": node.bytes if node else None,
                 "event_id": event,
                 "model": a.get(c.RESPONSE_MODEL) or a.get(c.REQUEST_MODEL) or a.get(c.OI_MODEL),
                 "agent_name": agent, "prompt_tokens": prompt, "completion_tokens": completion,
                 "total_tokens": total, "cost_usd": a.get(c.USAGE_COST, a.get(c.OI_COST)),
                 "timestamp": _micros(self.span.end_time_unix_nano)}]
