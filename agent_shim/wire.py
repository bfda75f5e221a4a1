"""The wire protocol between the shim and the collector: the one place both sides import.

A shim sends *frames*; the collector answers with *acks* after its database commit.

Frame (one ZeroMQ message part, msgpack)::

    [VERSION, batch_id, header, records]

- ``batch_id``: 16 bytes, the sender id (8 random bytes per process) and a big-endian sequence
  number. The collector acks it; a redelivered frame carries the same id.
- ``header``: ``{"host": str, "pid": int, "drops": [[run_id, reason, count], ...]}``; ``drops``
  holds the sender's cumulative counts of events it had to drop, per run and reason, so the
  stored run shows them.
- ``records``: a list of maps. In version 2 each has ``k``, its kind, and otherwise exactly the
  column names of the kind's table (``collector/tables.py``: session → sessions, run →
  workflow_runs, node → dag_nodes, edge → dag_edges, event → execution_events, cost →
  cost_records); a key that is not a column is refused. Ids are 16-byte UUIDs made by the shim
  (:func:`new_id`); times are integer microseconds since the Unix epoch, in their own columns
  (``started_at`` on a span's start, ``completed_at`` on its end, ``timestamp`` on every event
  and cost, ``created_at`` on a session).

A span (anything with a duration) is sent as a start record and an end record with the same id:
an open span is visible while it runs and stays ``running`` if its process dies. The end may
arrive before the start; the collector merges them whichever comes first (each column's merge
rule is declared in ``collector/tables.py``). A span that ended before the sender thread took
its start is sent as one record holding both (``started_at`` and ``completed_at``), merged as
the collector would have merged the two.

Version 1 frames (short keys such as ``run``, ``type``, ``agent``, a phase ``p`` and a time
``ts``) are still accepted: spools on disk hold them. The collector translates them once.

Replies (collector → shim)::

    [1, "ack", [batch_id, ...]]        committed: the shim forgets these frames
    [1, "refused", [batch_id, ...]]    quarantined whole and never to be accepted (malformed,
                                       oversize, truncated): the shim stops resending them and
                                       counts their events as dropped (reason ``refused``)

A shim that predates ``refused`` ignores it (it reads only ``ack``).
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

import msgpack

#: The version of the frames this shim sends; the collector accepts every one of :data:`VERSIONS`.
VERSION = 2
VERSIONS = (1, 2)
#: Replies keep version 1 whatever the frame's: a shim of any version reads them.
REPLY_VERSION = 1
ACK = "ack"
REFUSED = "refused"
REPLY_KINDS = (ACK, REFUSED)

PHASES = ("start", "end", "point")

#: Frames larger than this are refused by the collector (and never built by the shim).
MAX_FRAME_BYTES = 8 * 1024 * 1024


class WireError(ValueError):
    """A frame or record does not follow this protocol; ``reason`` is a short stable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# --- ids -----------------------------------------------------------------------------------
#
# UUIDv7 layout (RFC 9562): 48-bit Unix milliseconds, version 7, then 74 bits that must make ids
# unique.  ``uuid.uuid4()`` per event costs a urandom syscall; instead each process draws a random
# 32-bit node number once and counts.  Ids sort by time (to the millisecond), so they index well.

_fixed = 0  # the version and variant bits and this process's node number, in place
_counter: itertools.count[int] = itertools.count()


def _reseed() -> None:
    global _fixed, _counter
    seed = int.from_bytes(os.urandom(8), "big")
    _fixed = 0x7 << 76 | 0b10 << 62 | (seed >> 32) << 30
    _counter = itertools.count(seed & 0x3FFFFFFF)


_reseed()
os.register_at_fork(after_in_child=_reseed)


def new_id() -> bytes:
    """A fresh 16-byte, time-ordered id, unique across processes and hosts."""
    count = next(_counter) & 0x3FF_FFFF_FFFF  # 42 bits
    return ((time.time_ns() // 1_000_000) << 80 | _fixed | (count >> 30) << 64
            | (count & 0x3FFFFFFF)).to_bytes(16, "big")


def now_us() -> int:
    """The current time in the protocol's unit (integer microseconds since the epoch)."""
    return time.time_ns() // 1000


# --- frames --------------------------------------------------------------------------------


def pack_record(record: dict[str, Any]) -> bytes:
    """One record's bytes; records must hold only msgpack-native values (see ``payload``)."""
    packed: bytes = msgpack.packb(record, use_bin_type=True)
    return packed


def encode_frame(batch_id: bytes, header: dict[str, Any], packed_records: list[bytes],
                 version: int = VERSION) -> bytes:
    """Assemble a frame from records already packed by :func:`pack_record`."""
    envelope = msgpack.Packer(use_bin_type=True)
    return b"".join(
        (
            envelope.pack_array_header(4),
            envelope.pack(version),
            envelope.pack(batch_id),
            envelope.pack(header),
            envelope.pack_array_header(len(packed_records)),
            *packed_records,
        )
    )


def decode_frame(frame: bytes) -> tuple[int, bytes, dict[str, Any], list[Any]]:
    """Unpack and check a frame's envelope: its version, batch id, header and records (checked
    one by one by the collector).

    Raises :class:`WireError` with reason ``oversize``, ``malformed``, ``bad_envelope`` or
    ``unknown_version``.
    """
    if len(frame) > MAX_FRAME_BYTES:
        raise WireError("oversize", f"{len(frame)} bytes > {MAX_FRAME_BYTES}")
    try:
        # One bad string must not cost the frame: invalid UTF-8 becomes U+FFFD.
        message = msgpack.unpackb(frame, raw=False, strict_map_key=False, unicode_errors="replace")
    except Exception as exc:  # msgpack raises a family of unrelated types on bad input
        raise WireError("malformed", f"{type(exc).__name__}: {exc}") from None
    if not isinstance(message, list) or not message:
        raise WireError("bad_envelope", "a frame is a non-empty array")
    if message[0] not in VERSIONS:
        raise WireError("unknown_version", repr(message[0])[:100])
    if len(message) != 4:
        raise WireError("bad_envelope", f"expected 4 elements, got {len(message)}")
    version, batch_id, header, records = message
    if not isinstance(batch_id, bytes) or len(batch_id) != 16:
        raise WireError("bad_envelope", "batch_id must be 16 bytes")
    if not isinstance(header, dict) or not isinstance(records, list):
        raise WireError("bad_envelope", "header must be a map and records an array")
    return version, batch_id, header, records


def encode_reply(kind: str, batch_ids: list[bytes]) -> bytes:
    """A reply to a shim: ``kind`` is :data:`ACK` or :data:`REFUSED`."""
    reply: bytes = msgpack.packb([REPLY_VERSION, kind, batch_ids], use_bin_type=True)
    return reply


def decode_reply(message: bytes) -> tuple[str | None, list[bytes]]:
    """A reply's kind and batch ids; ``(None, [])`` for anything that is not a valid reply."""
    try:
        version, kind, batch_ids = msgpack.unpackb(message, raw=False)
    except Exception:
        return None, []
    if version != REPLY_VERSION or kind not in REPLY_KINDS or not isinstance(batch_ids, list):
        return None, []
    return kind, [b for b in batch_ids if isinstance(b, bytes) and len(b) == 16]


def peek_batch_id(frame: bytes) -> bytes | None:
    """The batch id at the head of a frame that may be malformed or truncated, if it is there.

    Lets the collector refuse (rather than silently ignore) a frame it cannot decode, so the
    shim that keeps resending it can give up on it.
    """
    unpacker = msgpack.Unpacker(max_buffer_size=max(len(frame), 1024), raw=False)
    unpacker.feed(frame[:64])
    try:
        if unpacker.read_array_header() != 4 or unpacker.unpack() not in VERSIONS:
            return None
        batch_id = unpacker.unpack()
    except Exception:
        return None
    return batch_id if isinstance(batch_id, bytes) and len(batch_id) == 16 else None
