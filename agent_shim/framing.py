"""Framing: queued records cleaned (redacted, truncated), packed, and grouped into wire frames.

A frame holds at most ``batch_max_events`` records and stops taking more once it holds
``batch_max_bytes``; a record that cannot be packed, or that alone passes
:data:`MAX_RECORD_BYTES`, is counted as dropped instead. Every frame's header carries the
cumulative drop counts of this process (``[[run, reason, count], ...]``), so that the stored
run shows them whichever frame arrives last.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from .config import ShimSettings
from .payload import Cleaner
from .wire import MAX_FRAME_BYTES, encode_frame, pack_record

log = logging.getLogger(__name__)

Record = dict[str, Any]
#: A packed record larger than this is dropped (``oversize``): two of them fill a frame.
MAX_RECORD_BYTES = MAX_FRAME_BYTES // 2


def run_of(record: Record) -> Any:
    """The run a record's drop is counted for (``None``: a session, which has no run)."""
    # ``run`` in a version 1 frame (a spool written before version 2).
    return (record.get("run_id") or record.get("run")
            or (record.get("id") if record.get("k") == "run" else None))


def payload_bytes(record: Record) -> int:
    """What a queued record holds beyond its fixed fields: its snapshotted payloads (bytes)."""
    # Unrolled: this runs on the caller's thread for every record.
    inputs, outputs, meta = record.get("inputs"), record.get("outputs"), record.get("meta")
    return ((len(inputs) if inputs else 0) + (len(outputs) if outputs else 0)
            + (len(meta) if meta else 0))


def readable_records(data: bytes) -> list[Any]:
    """The records that can be read from a frame, up to any damage."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False,
                                max_buffer_size=max(len(data), 1024))
    unpacker.feed(data)
    records: list[Any] = []
    try:
        if unpacker.read_array_header() != 4:
            return records
        for _ in range(3):  # version, batch id, header
            unpacker.skip()
        for _ in range(unpacker.read_array_header()):
            record = unpacker.unpack()
            if isinstance(record, dict):
                records.append(record)
    except Exception:  # damaged from here on: msgpack raises several unrelated types
        pass
    return records


class DropCounts:
    """Events this process had to drop, per (run, reason); cumulative. Any thread may count."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[Any, str]] = Counter()
        #: An event of this process (not of an adopted file) was dropped: no flush can succeed.
        self.lost_own = False

    def count(self, runs: Mapping[Any, int], reason: str, own: bool = True) -> None:
        with self._lock:
            for run, n in runs.items():
                self._counts[(run, reason)] += n
            self.lost_own = self.lost_own or own

    def count_record(self, record: Record, reason: str, own: bool = True) -> None:
        self.count({run_of(record): 1}, reason, own)

    def header(self) -> list[list[Any]]:
        """The counts of runs (not of sessions) as a frame header's ``drops``."""
        with self._lock:
            return [[run, reason, n] for (run, reason), n in self._counts.items() if run]


@dataclass(eq=False)
class Frame:
    """One encoded frame and what delivery needs to know about it."""

    seq: int
    batch_id: bytes
    data: bytes | None  # None while it is only on disk
    runs: Counter[Any]  # events per run, to count them if the frame is given up
    path: Path | None = None  # on disk: deleted once acknowledged
    own: bool = True  # False for files adopted from a process that is gone
    # Delivery's bookkeeping:
    sent_at: float = 0.0  # 0: not sent since the last (re)connect
    acks_at_send: int = 0  # acknowledgements received when it was last sent
    ignored: int = 0  # resends while the collector acknowledged other frames


class Framer:
    """Cleans and packs records into frames for one sender (its id and sequence numbers)."""

    def __init__(self, settings: ShimSettings, drops: DropCounts, sender_id: bytes) -> None:
        self._cleaner = Cleaner(settings.max_field_chars, settings.redact_keys,
                                settings.redact_patterns)
        self._max_events = settings.batch_max_events
        self._max_bytes = settings.batch_max_bytes
        self._drops = drops
        self._id = sender_id
        self._host = socket.gethostname()
        self.seq = 0  # of the last frame made

    def encode(self, record: Record, own: bool = True) -> bytes | None:
        """A record cleaned and packed; ``None`` (counted) if it cannot be packed or is too big."""
        try:
            data = pack_record(self._cleaner.clean_record(record))
        except Exception:
            log.exception("a record could not be packed and is dropped")
            self._drops.count_record(record, "unencodable", own)
            return None
        if len(data) > MAX_RECORD_BYTES:
            self._drops.count_record(record, "oversize", own)
            return None
        return data

    def pack(self, take: Callable[[], Record | None], stop: Callable[[], bool]) -> Frame | None:
        """A frame of the records ``take`` gives, oldest first, within the limits, until ``stop``
        says so; ``None`` if none was packed (time to stop, or none could be encoded)."""
        packed: list[bytes] = []
        runs: Counter[Any] = Counter()
        size = 0
        while len(packed) < self._max_events and size < self._max_bytes and not stop():
            record = take()
            if record is None:
                break
            data = self.encode(record)
            if data is not None:
                packed.append(data)
                size += len(data)
                runs[run_of(record)] += 1
        return self.frame(packed, runs) if packed else None

    def frame(self, packed: list[bytes], runs: Counter[Any]) -> Frame:
        """A new frame (the next sequence number) of packed records, with the drop counts."""
        self.seq += 1
        batch_id = self._id + self.seq.to_bytes(8, "big")
        header = {"host": self._host, "pid": os.getpid(), "drops": self._drops.header()}
        return Frame(self.seq, batch_id, encode_frame(batch_id, header, packed), runs)
