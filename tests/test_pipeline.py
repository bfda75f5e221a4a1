"""The collector's input side, fuzzed: nothing a client sends stops it or spoils good events."""

from __future__ import annotations

import asyncio
import uuid

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_shim.wire import encode_frame, new_id, pack_record
from collector.pipeline import decode
from collector.store import Store

from .helpers.frames import good_records
from .helpers.support import fetch

MAX = 8 * 1024 * 1024

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=30) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=5,
)
field_names = st.sampled_from(["k", "p", "id", "run", "session", "node", "parent", "type",
                               "subtype", "agent", "status", "depth", "ts", "inputs", "outputs",
                               "meta", "error", "model", "prompt_tokens", "cost_usd", "from", "to",
                               # version 2's: column names
                               "run_id", "session_id", "node_id", "event_type", "timestamp",
                               "started_at", "completed_at", "created_at", "from_node_id",
                               "to_node_id", "parent_event_id", "error_message"])
ids = st.binary(min_size=16, max_size=16)
records = st.dictionaries(field_names, values | ids | st.sampled_from(
    ["event", "run", "node", "edge", "cost", "session", "start", "end", "point"]), max_size=8)


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_decode_never_raises_on_arbitrary_bytes(frame: bytes) -> None:
    decoded = decode(b"peer", frame, MAX)
    assert decoded.rows == [] or decoded.batch_id is not None
    assert decoded.rows or decoded.quarantined or decoded.batch_id is not None


@given(st.lists(records, max_size=4), st.sampled_from([1, 2]))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_every_record_is_either_a_row_or_quarantined(bad: list[dict], version: int) -> None:
    packed = [msgpack.packb(r, use_bin_type=True) for r in bad]
    decoded = decode(b"peer", encode_frame(new_id(), {}, packed, version), MAX)
    assert len(decoded.rows) + len(decoded.quarantined) == len(bad)


@given(st.lists(records, min_size=1, max_size=4))
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_random_records_never_cost_the_good_events_of_their_frame(database: str,
                                                                  bad: list[dict]) -> None:
    run, good = good_records(3)
    packed = [*good[:2], *(msgpack.packb(r, use_bin_type=True) for r in bad), *good[2:]]
    decoded = decode(b"peer", encode_frame(new_id(), {}, packed), MAX)

    async def write() -> None:
        store = Store(database, pool_size=1)
        await store.open()
        try:
            await store.write([decoded])
        finally:
            await store.close()

    asyncio.run(write())
    stored = fetch(database, "SELECT inputs->>'i' AS i FROM execution_events "
                   "WHERE run_id = $1 AND event_type = 'message'", uuid.UUID(bytes=run))
    assert {"0", "1", "2"} <= {r["i"] for r in stored}


def test_end_before_start_and_redelivery_make_one_completed_span(database: str) -> None:
    from agent_shim.testing import recording_tracker

    tracker, sink = recording_tracker()
    with tracker.run("spans") as run:
        with tracker.span("tool_call", agent_name="a", inputs={"args": 1}):
            pass
    start, end = sink.of("event", moment="start")[0], sink.of("event", moment="end")[0]
    end_first = encode_frame(new_id(), {}, [pack_record(end)])
    everything = encode_frame(new_id(), {}, [pack_record(r) for r in sink.records])

    async def write() -> None:
        store = Store(database, pool_size=1)
        await store.open()
        try:
            for frame in (end_first, everything, everything):
                await store.write([decode(b"peer", frame, MAX)])
        finally:
            await store.close()

    asyncio.run(write())
    rows = fetch(database, "SELECT status, inputs, started_at, completed_at, duration_ms "
                 "FROM execution_events WHERE run_id = $1", uuid.UUID(bytes=run.id))
    assert len(rows) == 1
    row = rows[0]
    assert row["status"] == "completed" and row["inputs"] == '{"args": 1}'
    assert row["started_at"] < row["completed_at"] and row["duration_ms"] > 0
    assert start["id"] == end["id"]
