"""Events are copied straight into ``execution_events``; those already stored (a frame sent
again after a lost ack, a span's start arriving after its end) fall back to the merge through
staging. Either way each event is stored once, complete, in arrival order."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from agent_shim.testing import recording_tracker
from agent_shim.wire import encode_frame, new_id, pack_record
from collector.pipeline import Decoded, decode
from collector.store import Store, WriteResult

from .helpers.support import fetch

MAX = 8 * 1024 * 1024


def _frame(records: list[dict[str, Any]]) -> Decoded:
    decoded = decode(b"peer", encode_frame(new_id(), {}, [pack_record(r) for r in records]), MAX)
    assert decoded.quarantined == []
    return decoded


def _write_each(dsn: str, batches: list[list[Decoded]]) -> list[WriteResult]:
    """Each batch in a transaction of its own, as the daemon commits them."""
    async def write() -> list[WriteResult]:
        store = Store(dsn, pool_size=1)
        await store.open()
        try:
            return [await store.write(batch) for batch in batches]
        finally:
            await store.close()

    return asyncio.run(write())


def _events(dsn: str, run: bytes) -> list[Any]:
    return fetch(dsn, "SELECT id, event_type, status, started_at, completed_at, inputs "
                 "FROM execution_events WHERE run_id = $1 ORDER BY execution_order",
                 uuid.UUID(bytes=run))


def _workflow() -> tuple[bytes, list[dict[str, Any]], list[dict[str, Any]]]:
    """A run's records: its start and five message events; then a span's start and end."""
    tracker, sink = recording_tracker()
    with tracker.run("copy") as run:
        for i in range(5):
            tracker.event("message", inputs={"i": i})
        with tracker.span("tool_call"):
            pass
    records = [r for r in sink.records if r["k"] in ("run", "event")]
    *points, span_start, span_end = [r for r in records if r["k"] == "event"]
    run_records = [r for r in records if r["k"] == "run"]
    return run.id, [*run_records, *points], [span_start, span_end]


def test_a_frame_sent_again_is_stored_once_through_the_merge(database: str) -> None:
    run, records, _ = _workflow()

    first, again = _write_each(database, [[_frame(records)], [_frame(records)]])

    assert first.inserted["execution_events"] == 5 and first.merged["execution_events"] == 0
    assert again.inserted["execution_events"] == 0 and again.merged["execution_events"] == 5
    stored = _events(database, run)
    assert [row["inputs"] for row in stored] == [f'{{"i": {i}}}' for i in range(5)]


def test_a_span_s_end_merges_into_its_start_stored_in_an_earlier_batch(database: str) -> None:
    run, records, (start, end) = _workflow()

    results = _write_each(database, [[_frame([*records, start])], [_frame([end])]])

    assert results[1].merged["execution_events"] == 1
    (span,) = [row for row in _events(database, run) if row["event_type"] == "tool_call"]
    assert span["status"] == "completed" and span["started_at"] and span["completed_at"]


def test_a_span_s_start_arriving_after_its_end_merges_into_it(database: str) -> None:
    """The start is copied, fails on the stored end's key, and the batch's events are merged."""
    run, records, (start, end) = _workflow()

    results = _write_each(database, [[_frame([*records[:1], end])],
                                     [_frame([*records[1:], start])]])

    assert results[1].inserted["execution_events"] == 5  # the messages: new, in the fallback
    assert results[1].merged["execution_events"] == 1
    stored = _events(database, run)
    assert [row["event_type"] for row in stored] == ["tool_call"] + ["message"] * 5
    assert stored[0]["status"] == "completed" and stored[0]["started_at"] is not None


def test_events_keep_their_arrival_order_across_frames_and_batches(database: str) -> None:
    run, records, _ = _workflow()
    head, tail = records[:3], records[3:]

    _write_each(database, [[_frame(head), _frame(tail[:1])], [_frame(tail[1:])]])

    assert [row["inputs"] for row in _events(database, run)] == [
        f'{{"i": {i}}}' for i in range(5)]
