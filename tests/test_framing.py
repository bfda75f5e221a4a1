"""Framing in memory: records cleaned and packed into frames within the count and size limits,
drops counted and carried in every later frame's header."""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest

from agent_shim.config import ShimSettings
from agent_shim.framing import (
    MAX_RECORD_BYTES,
    DropCounts,
    Frame,
    Framer,
    payload_bytes,
    readable_records,
)
from agent_shim.payload import REDACTED, snapshot
from agent_shim.wire import decode_frame, new_id, now_us

RUN, SESSION, SENDER = new_id(), new_id(), bytes(range(8))


def message(i: int, content: str = "fit the spectrum", run: bytes = RUN) -> dict[str, Any]:
    return {"k": "event", "id": new_id(), "run_id": run, "session_id": SESSION,
            "event_type": "message", "inputs": snapshot({"i": i, "content": content}),
            "timestamp": now_us()}


def framer(**settings: Any) -> tuple[Framer, DropCounts]:
    drops = DropCounts()
    return Framer(ShimSettings(**settings), drops, SENDER), drops


def pack_all(framer: Framer, records: list[dict[str, Any]]) -> list[Frame]:
    queue = deque(records)
    frames = []
    while queue:
        frame = framer.pack(lambda: queue.popleft() if queue else None, lambda: False)
        if frame is not None:
            frames.append(frame)
    return frames


def contents(frame: Frame) -> tuple[bytes, dict[str, Any], list[Any]]:
    assert frame.data is not None
    _, batch_id, header, records = decode_frame(frame.data)
    return batch_id, header, records


def test_frames_hold_at_most_batch_max_events_and_number_themselves() -> None:
    made, _ = framer(batch_max_events=10)
    frames = pack_all(made, [message(i) for i in range(25)])
    assert [len(contents(f)[2]) for f in frames] == [10, 10, 5]
    assert [f.seq for f in frames] == [1, 2, 3]
    assert [contents(f)[0] for f in frames] == [SENDER + n.to_bytes(8, "big") for n in (1, 2, 3)]
    assert [r["inputs"]["i"] for f in frames for r in contents(f)[2]] == list(range(25))
    assert [f.runs for f in frames] == [{RUN: 10}, {RUN: 10}, {RUN: 5}]


def test_a_frame_stops_taking_records_once_it_holds_batch_max_bytes() -> None:
    made, _ = framer(batch_max_bytes=3_000)
    frames = pack_all(made, [message(i, "x" * 900) for i in range(10)])
    sizes = [len(f.data or b"") for f in frames]
    # Each record packs to about 1 KB: a frame takes records until it holds 3,000 bytes.
    assert [len(contents(f)[2]) for f in frames] == [3, 3, 3, 1], sizes
    assert all(size < 3_000 + 1_100 for size in sizes), sizes


def test_a_record_bigger_than_a_frame_allows_is_dropped_and_counted_its_neighbours_kept() -> None:
    made, drops = framer(max_field_chars=MAX_RECORD_BYTES)
    huge = message(1, "y" * (MAX_RECORD_BYTES + 1))
    frames = pack_all(made, [message(0), huge, message(2)])
    assert [r["inputs"]["i"] for f in frames for r in contents(f)[2]] == [0, 2]
    assert drops.header() == [[RUN, "oversize", 1]]
    assert drops.lost_own


def test_a_record_that_cannot_be_packed_is_dropped_and_counted() -> None:
    made, drops = framer()
    built_by_hand = {"k": "event", "id": new_id(), "run_id": RUN,
                     "inputs": {"odd": {1, 2}}}  # a set: msgpack has no such type
    frames = pack_all(made, [message(0), built_by_hand, message(2)])
    assert [r["inputs"]["i"] for f in frames for r in contents(f)[2]] == [0, 2]
    assert drops.header() == [[RUN, "unencodable", 1]]


def test_every_later_frame_carries_the_cumulative_drop_counts_of_runs() -> None:
    made, drops = framer(batch_max_events=1)
    other_run = new_id()
    first = pack_all(made, [message(0)])
    drops.count({RUN: 3}, "queue_full")
    drops.count({None: 2}, "queue_full")  # a session's records: no run to show them in
    drops.count({other_run: 1, RUN: 1}, "spool_full", own=False)
    later = pack_all(made, [message(1), message(2)])
    assert contents(first[0])[1]["drops"] == []
    for frame in later:
        header = contents(frame)[1]
        assert sorted(map(tuple, header["drops"])) == sorted(
            [(RUN, "queue_full", 3), (RUN, "spool_full", 1), (other_run, "spool_full", 1)])
        assert header["pid"] > 0 and header["host"]


def test_records_are_cleaned_before_they_are_framed() -> None:
    made, _ = framer()
    secret = "sk-proj-" + "A1b2C3d4" * 5
    frames = pack_all(made, [message(0, f"use {secret} now")])
    assert secret.encode() not in (frames[0].data or b"")
    assert contents(frames[0])[2][0]["inputs"]["content"] == f"use {REDACTED} now"


def test_packing_stops_when_told_and_takes_nothing_more() -> None:
    made, _ = framer()
    queue = deque(message(i) for i in range(5))
    taken = 0

    def take() -> dict[str, Any] | None:
        nonlocal taken
        taken += 1
        return queue.popleft()

    assert made.pack(take, lambda: taken >= 2) is not None
    assert len(queue) == 3
    assert made.pack(take, lambda: True) is None and len(queue) == 3


@pytest.mark.parametrize("fields, expected", [
    ({}, 0),
    ({"inputs": b"x" * 10}, 10),
    ({"inputs": b"x" * 10, "outputs": b"y" * 5, "meta": b"z"}, 16),
    ({"inputs": None, "meta": b"zz"}, 2),
])
def test_the_byte_estimate_is_the_snapshotted_payloads(fields: dict[str, Any],
                                                        expected: int) -> None:
    assert payload_bytes({"k": "event", "id": new_id(), **fields}) == expected


def test_a_damaged_frame_yields_the_records_before_the_damage() -> None:
    made, _ = framer()
    data = pack_all(made, [message(i) for i in range(10)])[0].data or b""
    assert [r["inputs"]["i"] for r in readable_records(data)] == list(range(10))
    cut = readable_records(data[: len(data) // 2])
    assert 0 < len(cut) < 10
    assert readable_records(b"\xc1garbage") == []
