"""Per-frame work: decode, validate, normalise into table rows; refuse what is bad.

A bad frame is quarantined whole; a bad record is quarantined alone and the frame's other
records go on. Each step is a small function that raises :class:`Reject`.

Memory per frame is bounded whatever it holds: at most ``max_frame_records`` records, at most
:data:`KEEP_REFUSED` refused inputs kept whole (the rest are counted by reason in one summary
each) and at most :data:`MAX_DROP_ENTRIES` drop counts from its header.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import msgpack

from agent_shim.wire import PHASES, WireError, decode_frame, peek_batch_id

from .tables import (
    COSTS,
    DROPS,
    EDGES,
    EVENTS,
    NODES,
    RUNS,
    SESSIONS,
    ColumnError,
    Row,
    Table,
    clean_text,
)

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MAX_TEXT = 10_000  # names, statuses, error messages: payloads go in jsonb columns
MAX_FRAME_RECORDS = 10_000  # a shim sends at most 2,000 (CMBAGENT_BATCH_MAX_EVENTS)
KEEP_REFUSED = 100  # refused inputs of one frame kept whole; the rest are counted
MAX_DROP_ENTRIES = 1_000  # drop counts in one header (a shim reports one per run and reason)
QUARANTINE_PAYLOAD_BYTES = 64 * 1024  # of a refused input, kept for inspection

#: Every reason the collector gives, for metric labels; the database's own refusals are
#: ``db_<SQLSTATE>``.
REASONS = frozenset({
    "oversize", "malformed", "bad_envelope", "unknown_version", "too_many_records",
    "bad_record", "unknown_kind", "bad_value", "bad_header", "unknown_session", "unencodable",
    "db_refused",
})


class Reject(ValueError):
    """Input that is refused; ``reason`` is a short stable code counted in metrics."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class Quarantined:
    """Refused input kept for inspection; ``count`` > 1 for a summary of several."""

    reason: str
    detail: str
    payload: bytes
    sender: str | None = None
    count: int = 1


class Refusals:
    """Refused inputs of one frame (or batch): the first :data:`KEEP_REFUSED` kept whole, the
    rest only counted, by reason, so a frame of a million bad records costs no more memory, and
    no more quarantine rows, than one of a hundred."""

    def __init__(self, sender: str | None, keep: int = KEEP_REFUSED) -> None:
        self.sender = sender
        self.kept: list[Quarantined] = []
        self._keep = keep
        self._counted: Counter[str] = Counter()
        self._samples: dict[str, tuple[str, bytes]] = {}

    def add(self, reason: str, detail: str, value: Any) -> None:
        """Keep (or count) one refused input; ``value`` is packed only when it is kept."""
        if len(self.kept) < self._keep:
            self.kept.append(Quarantined(reason, detail, _repack(value), self.sender))
            return
        if reason not in self._samples:
            self._samples[reason] = (detail, _repack(value))
        self._counted[reason] += 1

    def items(self) -> list[Quarantined]:
        """What is kept, then one summary per reason of what was only counted."""
        summaries = [
            Quarantined(reason, f"{count} more inputs refused for this reason, after the first "
                        f"{self._keep} of their frame; one of them: {self._samples[reason][0]}",
                        self._samples[reason][1], self.sender, count)
            for reason, count in self._counted.items()]
        return [*self.kept, *summaries]


@dataclass
class Decoded:
    """One frame's outcome: its rows per table, what was refused, and who to answer.

    ``batch_id`` is acknowledged after the commit; ``refused_id``, set when the whole frame is
    refused and its id could still be read, is answered ``refused`` so its shim stops resending.
    """

    identity: bytes
    batch_id: bytes | None
    rows: list[tuple[Table, Row]] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    refused_id: bytes | None = None

    @property
    def sender(self) -> str | None:
        batch_id = self.batch_id or self.refused_id
        return batch_id[:8].hex() if batch_id else None

    @property
    def records(self) -> int:
        """Inputs this frame holds in memory, stored or refused (for the batch bound)."""
        return len(self.rows) + sum(q.count for q in self.quarantined)


def decode(identity: bytes, frame: bytes, max_frame_bytes: int,
           max_frame_records: int = MAX_FRAME_RECORDS) -> Decoded:
    """Everything the collector needs from one received frame; never raises."""
    if len(frame) > max_frame_bytes:
        return refused(identity, frame, "oversize", f"{len(frame)} bytes > {max_frame_bytes}")
    try:
        batch_id, header, records = decode_frame(frame)
    except WireError as exc:
        return refused(identity, frame, exc.reason, exc.detail)
    if len(records) > max_frame_records:
        return refused(identity, frame, "too_many_records",
                       f"{len(records)} records > {max_frame_records}")
    decoded = Decoded(identity, batch_id)
    refusals = Refusals(decoded.sender)
    for record in records:
        try:
            decoded.rows.append(to_row(record))
        except Reject as exc:
            refusals.add(exc.reason, exc.detail, record)
    try:
        decoded.rows.extend(_drop_rows(header, decoded.sender or ""))
    except Reject as exc:
        refusals.add(exc.reason, exc.detail, header)
    decoded.quarantined = refusals.items()
    return decoded


def refused(identity: bytes, frame: bytes, reason: str, detail: str) -> Decoded:
    """A frame refused whole: quarantined (its head) and answered ``refused``."""
    return Decoded(identity, None,
                   quarantined=[Quarantined(reason, detail, frame[:QUARANTINE_PAYLOAD_BYTES])],
                   refused_id=peek_batch_id(frame))


def _repack(value: Any) -> bytes:
    try:
        packed: bytes = msgpack.packb(value, use_bin_type=True, default=repr)
    except Exception:
        packed = repr(value).encode(errors="replace")
    return packed[:QUARANTINE_PAYLOAD_BYTES]


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
        table, row = convert(record, phase)
        return table, table.prepare(row)
    except Reject:
        raise
    except ColumnError as exc:
        raise Reject("bad_value", str(exc)) from None
    except Exception as exc:  # a converter's own bug must not stop the frame's other records
        raise Reject("bad_record", f"{type(exc).__name__}: {exc}"[:500]) from None


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
    if len(drops) > MAX_DROP_ENTRIES:
        raise Reject("bad_header", f"{len(drops)} drop entries > {MAX_DROP_ENTRIES}")
    now = datetime.now(timezone.utc)
    rows = []
    for entry in drops:
        if not (isinstance(entry, list) and len(entry) == 3):
            raise Reject("bad_header", f"drop entry {entry!r}"[:200])
        run, reason, count = entry
        try:
            rows.append((DROPS, DROPS.prepare({
                "run_id": _as_uuid(run, "drops.run"), "sender": sender,
                "reason": clean_text(str(reason))[:100], "count": _as_int(count, "drops.count"),
                "updated_at": now})))
        except ColumnError as exc:
            raise Reject("bad_header", str(exc)) from None
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
    if (isinstance(value, bool) or not isinstance(value, int)
            or not 0 < value < 5_000_000_000_000_000):
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
    """An integer (its range is the column's to check)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise Reject("bad_record", f"{name} must be an integer, not {value!r}"[:200])
    return value


def _float(r: dict[str, Any], name: str) -> float | None:
    """A number (its range is the column's to check)."""
    value = r.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise Reject("bad_record", f"{name} must be a number, not {value!r}"[:200])
    return value


def _meta(r: dict[str, Any]) -> dict[str, Any] | None:
    meta = r.get("meta")
    return meta if meta is None or isinstance(meta, dict) else {"value": meta}
