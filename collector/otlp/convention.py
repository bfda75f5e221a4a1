"""What both directions agree on: attribute names, stable ids, attribute values.

Spans carry three vocabularies at once: the OpenTelemetry GenAI semantic conventions
(``gen_ai.*``), OpenInference (``openinference.span.kind``, ``llm.*``, ``tool.*``; what Phoenix
reads) and ours (``cmbagent.*``: the stored ids and columns, so that our own ingest rebuilds a
run exactly).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

# GenAI semantic conventions
OPERATION = "gen_ai.operation.name"
AGENT_NAME = "gen_ai.agent.name"
CONVERSATION = "gen_ai.conversation.id"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
USAGE_COST = "gen_ai.usage.cost"
TOOL_NAME = "gen_ai.tool.name"
TOOL_TYPE = "gen_ai.tool.type"
TRANSFER_FROM = "gen_ai.transfer.from_agent"
TRANSFER_TO = "gen_ai.transfer.to_agent"
# OpenInference
SPAN_KIND = "openinference.span.kind"
SESSION = "session.id"
OI_AGENT = "agent.name"
OI_MODEL = "llm.model_name"
OI_PROMPT_TOKENS = "llm.token_count.prompt"
OI_COMPLETION_TOKENS = "llm.token_count.completion"
OI_TOTAL_TOKENS = "llm.token_count.total"
OI_COST = "llm.cost.total"
OI_TOOL = "tool.name"
INPUT_VALUE = "input.value"
INPUT_MIME = "input.mime_type"
OUTPUT_VALUE = "output.value"
OUTPUT_MIME = "output.mime_type"
# Ours: what a stored row needs beyond the conventions
RECORD = "cmbagent.record"  # "run", "node" or "event"
ID = "cmbagent.id"
SESSION_NAME = "cmbagent.session.name"
TASK = "cmbagent.run.task"
NODE = "cmbagent.node_id"
PARENT_NODE = "cmbagent.parent_node_id"
PARENT_EVENT = "cmbagent.parent_event_id"
NODE_TYPE = "cmbagent.node_type"
NAME = "cmbagent.name"
AGENT = "cmbagent.agent"
ORDER_INDEX = "cmbagent.order_index"
DEPTH = "cmbagent.depth"
EVENT_TYPE = "cmbagent.event_type"
EVENT_SUBTYPE = "cmbagent.event_subtype"
STATUS = "cmbagent.status"
POINT = "cmbagent.point"  # an event or node without a duration
META = "cmbagent.meta"
COST_ID = "cmbagent.cost.id"
COST_NODE = "cmbagent.cost.node_id"
COST_EVENT = "cmbagent.cost.event_id"
COST_AGENT = "cmbagent.cost.agent"
COST_TIME = "cmbagent.cost.time_us"
TOTAL_TOKENS = "cmbagent.cost.total_tokens"
LINK = "cmbagent.link"  # a link's meaning: "edge" (a DAG edge into this node) or "retry_of"
DEPENDENCY = "cmbagent.dependency_type"
CONDITION = "cmbagent.condition"

JSON_MIME = "application/json"


def span_id(key: uuid.UUID) -> bytes:
    """The 8-byte span id of a stored row: a hash, since time-ordered ids share their prefix."""
    return hashlib.blake2b(key.bytes, digest_size=8).digest()


def foreign_id(trace_id: bytes, span: bytes, salt: bytes = b"") -> uuid.UUID:
    """The stored id of a span that came without one of ours: stable, so resending is harmless."""
    return uuid.UUID(bytes=hashlib.blake2b(trace_id + span + salt, digest_size=16).digest())


def any_value(value: Any) -> AnyValue:
    """An attribute value: scalars as themselves, anything else as JSON text."""
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, str):
        return AnyValue(string_value=value)
    return AnyValue(string_value=json.dumps(value, default=str, ensure_ascii=False))


def key_values(attributes: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=k, value=any_value(v)) for k, v in attributes.items() if v is not None]


def plain(value: AnyValue) -> Any:
    """An attribute value as Python: arrays and maps included."""
    which = value.WhichOneof("value")
    if which == "array_value":
        return [plain(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: plain(kv.value) for kv in value.kvlist_value.values}
    if which == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, which) if which else None


def attributes(items: Any) -> dict[str, Any]:
    return {kv.key: plain(kv.value) for kv in items}
