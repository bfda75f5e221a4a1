"""Per-frame work: decode, validate, normalise into table rows; refuse what is bad.

A bad frame is quarantined whole; a bad record is quarantined alone and the frame's other
records go on. Each step is a small function that raises :class:`Reject`.

Memory per frame is bounded whatever it holds: at most ``max_frame_records`` records, at most
:data:`KEEP_REFUSED` refused inputs kept whole (the rest are counted by reason in one summary
each) and at most :data:`MAX_DROP_ENTRIES` drop counts from its header.
"""

from __future__ import annotations

import functools
import operator
from collections import Counter
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgpack
import msgspec

from agent_shim.wire import PHASES, WireError, decode_frame, now_us, peek_batch_id

from .tables import DROPS, KINDS, ColumnError, NotFast, Row, Table

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
    """Everything the collector needs from one received frame; never raises.

    A version 2 frame whose every record is valid is decoded in one typed pass (msgspec);
    any other frame (version 1, or anything typed decoding refuses) takes the record-by-record
    path, which finds and names what is wrong. Both make the same rows."""
    if len(frame) > max_frame_bytes:
        return refused(identity, frame, "oversize", f"{len(frame)} bytes > {max_frame_bytes}")
    typed = decode_typed(identity, frame, max_frame_records)
    return typed if typed is not None else decode_checked(identity, frame, max_frame_records)


def decode_checked(identity: bytes, frame: bytes, max_frame_records: int) -> Decoded:
    """The frame decoded record by record, each checked against its table: the reference that
    :func:`decode_typed` matches, and the path for every frame it does not take."""
    try:
        version, batch_id, header, records = decode_frame(frame)
    except WireError as exc:
        return refused(identity, frame, exc.reason, exc.detail)
    if len(records) > max_frame_records:
        return refused(identity, frame, "too_many_records",
                       f"{len(records)} records > {max_frame_records}")
    decoded = Decoded(identity, batch_id)
    refusals = Refusals(decoded.sender)
    for record in records:
        try:
            decoded.rows.append(to_row(record, version))
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


# --- typed decoding of version 2 frames -------------------------------------------------------


def _record_type(kind: str, table: Table) -> type[msgspec.Struct]:
    """A record of ``kind`` as msgspec decodes it: the table's columns in order, each of its
    column's :attr:`~collector.tables.Column.wire_type`; ``k`` is the tag."""
    fields = [(c.name, c.wire_type) if c.needed else (c.name, c.wire_type, None)
              for c in table.columns]
    # gc=False: decoded msgpack holds no reference cycles, so the collector need not track them.
    return msgspec.defstruct(f"{kind}_record", fields, kw_only=True, tag_field="k", tag=kind,
                             forbid_unknown_fields=True, gc=False)


_TABLE_OF: dict[type[msgspec.Struct], Table] = {
    _record_type(kind, table): table for kind, table in KINDS.items()}


def _no_extension(code: int, data: memoryview) -> Any:
    raise ValueError("a msgpack extension type: decoded on the checked path")


_BatchId = Annotated[bytes, msgspec.Meta(min_length=16, max_length=16)]
_Record: Any = functools.reduce(operator.or_, _TABLE_OF)  # any of the kinds, told by ``k``
_FRAME = msgspec.msgpack.Decoder(
    tuple[Literal[2], _BatchId, msgspec.Raw,  # the header: read as the checked path reads it
          list[_Record]],
    ext_hook=_no_extension)
_astuple = msgspec.structs.astuple


def decode_typed(identity: bytes, frame: bytes, max_frame_records: int) -> Decoded | None:
    """The frame decoded in one typed pass, or ``None`` if it is not a version 2 frame of valid
    records only (the checked path then decides, and names what is wrong)."""
    try:
        _, batch_id, raw_header, records = _FRAME.decode(frame)
        header = msgpack.unpackb(raw_header, raw=False, strict_map_key=False,
                                 unicode_errors="replace")
    except Exception:  # any refusal: msgspec's, an extension type, a bad header
        return None
    if len(records) > max_frame_records or not isinstance(header, dict):
        return None
    decoded = Decoded(identity, batch_id)
    table_of = _TABLE_OF
    try:
        decoded.rows = [(table, table.finish(_astuple(record)))
                        for record in records for table in (table_of[type(record)],)]
    except NotFast:
        return None
    try:
        decoded.rows.extend(_drop_rows(header, decoded.sender or ""))
    except Reject as exc:
        refusals = Refusals(decoded.sender)
        refusals.add(exc.reason, exc.detail, header)
        decoded.quarantined = refusals.items()
    return decoded


# --- records → rows (the checked path) -------------------------------------------------------


def to_row(record: Any, version: int = 2) -> tuple[Table, Row]:
    """The table and row a record makes, every value checked against its column; raises
    :class:`Reject`. A version 1 record is translated first (spools on disk still hold them)."""
    if not isinstance(record, dict):
        raise Reject("bad_record", f"a record is a map, not {type(record).__name__}")
    kind = record.get("k")
    table = KINDS.get(kind) if isinstance(kind, str) else None
    if table is None:
        raise Reject("unknown_kind", repr(kind)[:100])
    if version == 1:
        record = _from_v1(record)
    for name in record:
        if name not in table.names and name != "k":
            raise Reject("bad_record", f"{table.name} has no column {name!r}"[:200])
    for name in table.required:
        if record.get(name) in (None, ""):
            raise Reject("bad_record", f"{name} is required")
    try:
        return table, table.prepare(record)
    except ColumnError as exc:
        raise Reject("bad_value", str(exc)) from None
    except Exception as exc:  # a check's own bug must not stop the frame's other records
        raise Reject("bad_record", f"{type(exc).__name__}: {exc}"[:500]) from None


# Version 1 names (per kind) of the columns they fill, and the columns its ``ts`` fills:
# always, on a ``start`` record, on an ``end`` record.
_V1_SHARED = {"id": "id", "run": "run_id", "session": "session_id", "status": "status",
              "error": "error_message", "meta": "meta"}
_V1_NAMES: dict[str, dict[str, str]] = {
    "session": {"id": "id", "name": "name", "status": "status", "meta": "meta"},
    "run": {**_V1_SHARED, "task": "task_description"},
    "node": {**_V1_SHARED, "name": "name", "node_type": "node_type",
             "parent_node": "parent_node_id", "depth": "depth", "agent": "agent",
             "order_index": "order_index"},
    "edge": {"run": "run_id", "from": "from_node_id", "to": "to_node_id",
             "dependency_type": "dependency_type", "condition": "condition"},
    "event": {**_V1_SHARED, "type": "event_type", "subtype": "event_subtype", "node": "node_id",
              "parent": "parent_event_id", "agent": "agent_name", "depth": "depth",
              "inputs": "inputs", "outputs": "outputs"},
    "cost": {"id": "id", "run": "run_id", "session": "session_id", "node": "node_id",
             "event": "event_id", "model": "model", "agent": "agent_name",
             "prompt_tokens": "prompt_tokens", "completion_tokens": "completion_tokens",
             "total_tokens": "total_tokens", "cost_usd": "cost_usd"},
}
_V1_TIMES: dict[str, tuple[str | None, str | None, str | None]] = {
    "session": ("created_at", None, None), "run": (None, "started_at", "completed_at"),
    "node": (None, "started_at", "completed_at"), "edge": (None, None, None),
    "event": ("timestamp", "started_at", "completed_at"), "cost": ("timestamp", None, None),
}


def _from_v1(record: dict[Any, Any]) -> dict[Any, Any]:
    """A version 1 record with version 2's keys; its unknown keys are ignored, as v1 did."""
    kind = record["k"]
    phase = record.get("p", "point")
    if phase not in PHASES:
        raise Reject("bad_record", f"phase {phase!r}"[:200])
    names = _V1_NAMES[kind]
    translated = {names[key]: value for key, value in record.items() if key in names}
    translated["k"] = kind
    always, on_start, on_end = _V1_TIMES[kind]
    ts = record.get("ts")
    if kind != "edge" and ts is None:
        raise Reject("bad_record", "ts is required")
    for column in (always, on_start if phase == "start" else None,
                   on_end if phase == "end" else None):
        if column is not None:
            translated[column] = ts
    return translated


def _drop_rows(header: dict[str, Any], sender: str) -> list[tuple[Table, Row]]:
    drops = header.get("drops") or []
    if not isinstance(drops, list):
        raise Reject("bad_header", "drops must be a list")
    if len(drops) > MAX_DROP_ENTRIES:
        raise Reject("bad_header", f"{len(drops)} drop entries > {MAX_DROP_ENTRIES}")
    now = now_us()
    rows = []
    for entry in drops:
        if not (isinstance(entry, list) and len(entry) == 3):
            raise Reject("bad_header", f"drop entry {entry!r}"[:200])
        run, reason, count = entry
        try:
            rows.append((DROPS, DROPS.prepare({
                "run_id": run, "sender": sender, "reason": str(reason)[:100], "count": count,
                "updated_at": now})))
        except ColumnError as exc:
            raise Reject("bad_header", f"drops: {exc}") from None
    return rows
