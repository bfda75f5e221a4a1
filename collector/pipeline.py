"""Per-frame work: decode, validate, normalise into table rows; refuse what is bad.

A bad frame is quarantined whole; a bad record is quarantined alone and the frame's other
records go on. Each step is a small function that raises :class:`Reject`.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import msgpack

from agent_shim.wire import PHASES, WireError, decode_frame

from .tables import COSTS, DROPS, EDGES, EVENTS, NODES, RUNS, SESSIONS, Row, Table, clean_text

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MAX_TEXT = 10_000  # names, statuses, error messages: payloads go in jsonb columns


class Reject(ValueError):
    """Input that is refused; ``reason`` is a short stable code counted in metrics."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class Quarantined:
    reason: str
    detail: str
    payload: bytes
    sender: str | None = None


@dataclass
class Decoded:
    """One frame's outcome: its rows per table, what was refused, and who to ack."""

    identity: bytes
    batch_id: bytes | None
    rows: list[tuple[Table, Row]] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)

    @property
    def sender(self) -> str | None:
        return self.batch_id[:8].hex() if self.batch_id else None


def decode(identity: bytes, frame: bytes, max_frame_bytes: int) -> Decoded:
    """Everything the collector needs from one received frame; never raises."""
    if len(frame) > max_frame_bytes:
        return _refused(identity, frame, "oversize", f"{len(frame)} bytes > {max_frame_bytes}")
    try:
        batch_id, header, records = decode_frame(frame)
    except WireError as exc:
        return _refused(identity, frame, exc.reason, exc.detail)
    decoded = Decoded(identity, batch_id)
    for record in records:
        try:
            decoded.rows.append(to_row(record))
        except Reject as exc:
            decoded.quarantined.append(
                Quarantined(exc.reason, exc.detail, _repack(record), decoded.sender))
    try:
        decoded.rows.extend(_drop_rows(header, decoded.sender or ""))
    except Reject as exc:
        decoded.quarantined.append(Quarantined(exc.reason, exc.detail, _repack(header),
                                               decoded.sender))
    return decoded


def _refused(identity: bytes, frame: bytes, reason: str, detail: str) -> Decoded:
    return Decoded(identity, None, quarantined=[Quarantined(reason, detail, frame)])


def _repack(value: Any) -> bytes:
    try:
        return msgpack.packb(value, use_bin_type=True, default=repr)
    except Exception:
        return repr(value).encode(errors="replace")


# --- records → rows ------------------------------------------------------------------------


def to_row(record: Any) -> tuple[Table, Row]:
    if not isinstance(record, dict):
        raise Reject("bad_record", f"a record is a map, not {type(record).__name__}")
    kind = record.get("k")
    convert = _CONVERTERS.get(kind) if isinstance(kind, str) else None
    if convert is None:
        raise Reject("unknown_kind", repr(kind)[:100])
    phase = record.get("p", "point")
    if phase not in PHASES:
        raise Reject("bad_record", f"phase {phase!r}")
    try:
        return convert(record, phase)
    except Reject:
        raise
    except Exception as exc:  # a converter's own bug must not stop the frame's other records
        raise Reject("bad_record", f"{type(exc).__name__}: {exc}") from None


def _session(r: dict[str, Any], phase: str) -> tuple[Table, Row]:
    return SESSIONS, {"id": _id(r, "id"), "name": _text(r, "name"), "status": _text(r, "status"),
                      "created_at": _ts(r), "meta": _meta(r)}


def _run(r: dict[str, Any], phase: str) -> tuple[Table, Row]:
    ts = _ts(r)
    return RUNS, {
        "id": _id(r, "id"), "session_id": _id(r, "session", required=False),
        "status": _text(r, "status"), "task_description": _text(r, "task"),
        "error_message": _text(r, "error"), "meta": _meta(r),
        "started_at": ts if phase == "start" else None,
        "completed_at": ts if phase == "end" else None,
    }


def _node(r: dict[str, Any], phase: str) -> tuple[Table, Row]:
    ts = _ts(r)
    return NODES, {
        "run_id": _id(r, "run"), "id": _id(r, "id"), "session_id": _id(r, "session", False),
        "parent_node_id": _id(r, "parent_node", False), "depth": _int(r, "depth"),
        "node_type": _text(r, "node_type"), "name": _text(r, "name"), "agent": _text(r, "agent"),
        "status": _text(r, "status"), "order_index": _int(r, "order_index"),
        "error_message": _text(r, "error"), "meta": _meta(r),
        "started_at": ts if phase == "start" else None,
        "completed_at": ts if phase == "end" else None,
    }


def _edge(r: dict[str, Any], phase: str) -> tuple[Table, Row]:
    return EDGES, {"run_id": _id(r, "run"), "from_node_id": _id(r, "from"),
                   "to_node_id": _id(r, "to"), "dependency_type": _text(r, "dependency_type"),
                   "condition": _text(r, "condition")}


def _event(r: dict[str, Any], phase: str) -> tuple[Table, Row]:
    ts = _ts(r)
    event_type = _text(r, "type")
    if not event_type:
        raise Reject("bad_record", "an event needs a type")
    return EVENTS, {
        "run_id": _id(r, "run"), "id": _id(r, "id"), "session_id": _id(r, "session", False),
        "node_id": _id(r, "node", False), "parent_event_id": _id(r, "parent", False),
        "event_type": event_type, "event_subtype": _text(r, "subtype"),
        "agent_name": _text(r, "agent"), "status": _text(r, "status"), "timestamp": ts,
        "started_at": ts if phase == "start" else None,
        "completed_at": ts if phase == "end" else None,
        "inputs": r.get("inputs"), "outputs": r.get("outputs"),
        "meta": _meta(r), "error_message": _text(r, "error"), "depth": _int(r, "depth"),
    }


def _cost(r: dict[str, Any], phase: str) -> tuple[Table, Row]:
    return COSTS, {
        "run_id": _id(r, "run"), "id": _id(r, "id"), "session_id": _id(r, "session", False),
        "node_id": _id(r, "node", False), "event_id": _id(r, "event", False),
        "model": _text(r, "model"), "agent_name": _text(r, "agent"),
        "prompt_tokens": _int(r, "prompt_tokens"),
        "completion_tokens": _int(r, "completion_tokens"),
        "total_tokens": _int(r, "total_tokens"), "cost_usd": _float(r, "cost_usd"),
        "timestamp": _ts(r),
    }


_CONVERTERS: dict[str, Callable[[dict[str, Any], str], tuple[Table, Row]]] = {
    "session": _session, "run": _run, "node": _node, "edge": _edge, "event": _event,
    "cost": _cost,
}


def _drop_rows(header: dict[str, Any], sender: str) -> list[tuple[Table, Row]]:
    drops = header.get("drops") or []
    if not isinstance(drops, list):
        raise Reject("bad_header", "drops must be a list")
    now = datetime.now(timezone.utc)
    rows = []
    for entry in drops:
        if not (isinstance(entry, list) and len(entry) == 3):
            raise Reject("bad_header", f"drop entry {entry!r}"[:200])
        run, reason, count = entry
        rows.append((DROPS, {"run_id": _as_uuid(run, "drops.run"), "sender": sender,
                             "reason": clean_text(str(reason))[:100],
                             "count": _as_int(count, "drops.count"), "updated_at": now}))
    return rows


# --- field checks ---------------------------------------------------------------------------


def _id(r: dict[str, Any], name: str, required: bool = True) -> uuid.UUID | None:
    value = r.get(name)
    if value is None:
        if required:
            raise Reject("bad_record", f"{name} is required")
        return None
    return _as_uuid(value, name)


def _as_uuid(value: Any, name: str) -> uuid.UUID:
    if not isinstance(value, bytes) or len(value) != 16:
        raise Reject("bad_record", f"{name} must be 16 bytes")
    return uuid.UUID(bytes=value)


def _ts(r: dict[str, Any]) -> datetime:
    value = r.get("ts")
    # Within a century of the epoch's microseconds: anything else is a unit mix-up.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 5_000_000_000_000_000:
        raise Reject("bad_record", f"ts must be integer microseconds, not {value!r}"[:200])
    return EPOCH + timedelta(microseconds=value)


def _text(r: dict[str, Any], name: str) -> str | None:
    value = r.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise Reject("bad_record", f"{name} must be text, not {type(value).__name__}")
    return clean_text(value)[:MAX_TEXT]


def _int(r: dict[str, Any], name: str) -> int | None:
    return _as_int(r.get(name), name)


def _as_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) >= 2**63:
        raise Reject("bad_record", f"{name} must be an integer, not {value!r}"[:200])
    return value


def _float(r: dict[str, Any], name: str) -> float | None:
    value = r.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise Reject("bad_record", f"{name} must be a finite number, not {value!r}"[:200])
    return float(value)


def _meta(r: dict[str, Any]) -> dict[str, Any] | None:
    meta = r.get("meta")
    return meta if meta is None or isinstance(meta, dict) else {"value": meta}
