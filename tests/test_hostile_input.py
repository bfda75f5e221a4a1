"""Values the database cannot take, and frames PostgreSQL refuses row by row: each bad value is
quarantined alone with its reason, everything else of its frame and every other frame is
stored, and nothing stalls the collector."""

from __future__ import annotations

import asyncio
import os
import random
import string
import subprocess
import sys
import uuid
from typing import Any

import msgpack
import zmq

from agent_shim.records import moment
from agent_shim.testing import recording_tracker
from agent_shim.wire import (
    REFUSED,
    VERSION,
    decode_reply,
    encode_frame,
    new_id,
    now_us,
    pack_record,
)
from collector.pipeline import Decoded, decode
from collector.store import SPLIT_BUDGET_PER_LEVEL, Store
from collector.tables import EVENTS

from .helpers.support import CollectorProcess, fetch, fetchval

MiB = 1024 * 1024
MAX = 8 * MiB


def workflow_records(events: int = 3) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A run with a step node and ``events`` message events; its run record and all records."""
    tracker, sink = recording_tracker()
    with tracker.run("hostile") as run:
        with run.step(1, "fit"):
            for i in range(events):
                tracker.event("message", inputs={"i": i})
    return sink.of("run", moment="start")[0], list(sink.records)


def copy_of(record: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """The record as another row of its table (a new id), with ``changes``."""
    return {**record, "id": new_id(), **changes}


def nested(levels: int) -> bytes:
    """msgpack for ``levels`` nested one-element arrays (deeper than msgpack's packer goes)."""
    return b"\x91" * levels + b"\xc0"


def pack_with_deep_inputs(record: dict[str, Any], levels: int) -> bytes:
    marker = "@@deep@@"
    return pack_record({**record, "inputs": marker}).replace(msgpack.packb(marker), nested(levels))


def exchange(url: str, frames: list[bytes | list[bytes]],
             expect: set[bytes]) -> dict[str, set[bytes]]:
    """Send frames (a list: the parts of one message) from one client; the replies, by kind,
    once every id in ``expect`` came."""
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.connect(url)
    replies: dict[str, set[bytes]] = {}
    try:
        for frame in frames:
            sock.send_multipart(frame if isinstance(frame, list) else [frame])
        while not expect <= set().union(*replies.values()):
            assert sock.poll(30_000), f"replies missing; got {replies}"
            kind, ids = decode_reply(sock.recv())
            assert kind is not None
            replies.setdefault(kind, set()).update(ids)
    finally:
        sock.close(linger=0)
        context.term()
    return replies


def quarantined(dsn: str) -> dict[str, list[str]]:
    details: dict[str, list[str]] = {}
    for row in fetch(dsn, "SELECT reason, detail FROM quarantine ORDER BY id"):
        details.setdefault(row["reason"], []).append(row["detail"])
    return details


def test_values_their_columns_cannot_hold_are_quarantined_alone(
        collector: CollectorProcess) -> None:
    run, records = workflow_records()
    node = next(r for r in records if r["k"] == "node")
    event = next(r for r in records if r["k"] == "event")
    bad = [
        pack_record(copy_of(node, order_index=2**40)),     # integer column, wire-valid int
        pack_record(copy_of(event, depth=3_000_000_000)),  # integer column
        pack_record({"k": "cost", "id": new_id(), "run_id": run["id"],
                     "session_id": run["session_id"], "timestamp": now_us(), "cost_usd": 1e12,
                     "total_tokens": 2**62}),              # numeric(20, 10) column
        pack_with_deep_inputs(copy_of(event), 1000),       # Python's JSON encoder recurses
        pack_with_deep_inputs(copy_of(event), 300),        # deeper than the declared jsonb depth
    ]
    mixed = encode_frame(new_id(), {}, [*map(pack_record, records[:4]), *bad,
                                        *map(pack_record, records[4:])])
    other_run, others = workflow_records(5)
    other = encode_frame(new_id(), {}, [pack_record(r) for r in others])
    ids = {msgpack.unpackb(f)[1] for f in (mixed, other)}

    assert exchange(collector.url, [mixed, other], ids) == {"ack": ids}

    dsn = collector.dsn
    for good, count in ((run, 3), (other_run, 5)):
        assert fetchval(dsn, "SELECT count(*) FROM execution_events WHERE run_id = $1 "
                        "AND event_type = 'message'", uuid.UUID(bytes=good["id"])) == count
    assert fetchval(dsn, "SELECT count(*) FROM dag_nodes WHERE run_id = $1",
                    uuid.UUID(bytes=run["id"])) == 1
    assert fetchval(dsn, "SELECT count(*) FROM cost_records") == 0
    details = quarantined(dsn)
    assert list(details) == ["bad_value"]
    assert sorted(d.split(":")[0] for d in details["bad_value"]) == [
        "cost_records.cost_usd", "dag_nodes.order_index", "execution_events.depth",
        "execution_events.inputs", "execution_events.inputs"]
    assert any("1099511627776 is outside the integer range [-2147483648, 2147483647]" in d
               for d in details["bad_value"])
    assert any("nested deeper than 256 levels" in d for d in details["bad_value"])
    assert collector.alive()


SHIM_PROGRAM = """
import agent_shim
from agent_shim.context import CURRENT
from agent_shim.wire import new_id
from agent_shim import records

t = agent_shim.activate()
with t.run("big values") as run:
    t.event("message", inputs={"i": 0})
    t.record(records.node("point", CURRENT.get(), new_id(), name="n", order_index=3_000_000_000))
    t.cost(model="m", cost_usd=1e12)
    with run.step(1, "after"):
        t.event("message", inputs={"i": 1})
print(f"run={run.uuid} flushed={t.flush(30)}")
"""


def test_the_shims_own_api_cannot_stall_the_collector(collector: CollectorProcess,
                                                      agent_env: dict[str, str]) -> None:
    env = {**os.environ, **agent_env, "CMBAGENT_COLLECTOR_URL": collector.url}
    result = subprocess.run([sys.executable, "-c", SHIM_PROGRAM], env=env, capture_output=True,
                            text=True, timeout=120)
    assert "flushed=True" in result.stdout, result.stderr
    run = uuid.UUID(result.stdout.split("run=")[1].split()[0])
    dsn = collector.dsn
    assert fetchval(dsn, "SELECT count(*) FROM execution_events WHERE run_id = $1 "
                    "AND event_type = 'message'", run) == 2
    assert fetchval(dsn, "SELECT array_agg(name) FROM dag_nodes WHERE run_id = $1", run) == [
        "step_1"]
    assert sorted(d.split(":")[0] for d in quarantined(dsn)["bad_value"]) == [
        "cost_records.cost_usd", "dag_nodes.order_index"]


# --- what PostgreSQL itself refuses --------------------------------------------------------


def _write(dsn: str, frames: list[Decoded]) -> Any:
    async def write() -> Any:
        store = Store(dsn, pool_size=1)
        await store.open()
        try:
            return await store.write(frames)
        finally:
            await store.close()

    return asyncio.run(write())


def _too_big_to_index() -> str:
    """An event type PostgreSQL refuses: 3,000 random letters do not fit a btree entry
    (2,704 bytes; ``execution_events_type`` indexes the type) and do not compress."""
    return "".join(random.choices(string.ascii_letters, k=3000))


def _events_frame(count: int, bad: set[int]) -> tuple[bytes, Decoded]:
    run, records = workflow_records(count)
    events = [r for r in records if r["k"] == "event" and moment(r) == "point"]
    for i in bad:
        events[i]["event_type"] = _too_big_to_index()
    # One decoded frame of all these rows; 10,000 refused types take 30 MB, past the frame
    # limit, so they are decoded in pieces: the store sees rows, not bytes.
    decoded = Decoded(b"peer", new_id())
    for start in range(0, len(records), 2_000):
        chunk = [pack_record(r) for r in records[start:start + 2_000]]
        decoded.rows += decode(b"peer", encode_frame(new_id(), {}, chunk), MAX).rows
    return run["id"], decoded


def _budget(rows: int) -> int:
    return SPLIT_BUDGET_PER_LEVEL * rows.bit_length() + 2  # the first try, the quarantine


def test_a_frame_refused_row_by_row_is_isolated_in_log_rows_transactions(database: str) -> None:
    bad_run, refused = _events_frame(10_000, bad=set(range(10_000)))
    good_run, good = _events_frame(100, bad=set())
    rows = len(refused.rows) + len(good.rows)

    result = _write(database, [refused, good])

    assert result.transactions <= _budget(rows) < 70, result.transactions  # not ~2 x 10,000
    assert result.quarantined["db_54000"] >= 10_000  # and maybe a few good rows near them
    assert fetchval(database, "SELECT count(*) FROM execution_events WHERE run_id = $1 "
                    "AND event_type = 'message'", uuid.UUID(bytes=good_run)) == 100
    assert fetchval(database, "SELECT count(*) FROM execution_events WHERE run_id = $1 AND "
                    "length(event_type) > 100", uuid.UUID(bytes=bad_run)) == 0
    assert fetchval(database, "SELECT count(*) FROM quarantine") < result.transactions


def test_one_refused_row_among_ten_thousand_is_quarantined_alone(database: str) -> None:
    run, frame = _events_frame(10_000, bad={4321})
    rows = len(frame.rows)

    result = _write(database, [frame])

    assert result.transactions <= 2 * rows.bit_length() + 2, result.transactions
    assert dict(result.quarantined) == {"db_54000": 1}
    assert fetchval(database, "SELECT count(*) FROM execution_events WHERE run_id = $1 "
                    "AND event_type = 'message'", uuid.UUID(bytes=run)) == 9_999
    (row,) = fetch(database, "SELECT reason, detail FROM quarantine")
    assert row["reason"] == "db_54000" and "index row size" in row["detail"]


def test_a_local_encoding_error_is_a_data_error_not_a_stall(database: str) -> None:
    """A value the checks let through by mistake fails while the batch is encoded here."""
    run, frame = _events_frame(1_000, bad=set())
    row = next(r for t, r in frame.rows if t is EVENTS)
    unchecked = {**EVENTS.as_dict(row), "id": new_id(), "depth": 2**40}  # past integer's range
    frame.rows.append((EVENTS, tuple(unchecked.values())))

    result = _write(database, [frame])

    assert dict(result.quarantined) == {"unencodable": 1}
    assert result.transactions <= 2 * len(frame.rows).bit_length() + 2
    assert fetchval(database, "SELECT count(*) FROM execution_events WHERE run_id = $1 "
                    "AND event_type = 'message'", uuid.UUID(bytes=run)) == 1_000


# --- frames refused whole are answered "refused" -------------------------------------------


def test_frames_quarantined_whole_are_answered_refused_with_their_id(
        collector: CollectorProcess) -> None:
    ids = {name: new_id() for name in ("truncated", "malformed", "envelope", "oversize", "many",
                                       "multipart")}
    whole = msgpack.packb([VERSION, ids["truncated"], {}, [{"k": "x"}]])
    frames = [
        whole[:-3],
        msgpack.packb([VERSION, ids["malformed"], {}, []])[:-1] + b"\xc1",  # never-used byte
        msgpack.packb([VERSION, ids["envelope"], "a header must be a map", []]),
        encode_frame(ids["oversize"], {}, [b"\xc4\xff" + b"x" * 255] * (MAX // 250)),
        encode_frame(ids["many"], {}, [b"\xc0"] * 10_001),
        # Two parts, each under the 32 MiB message limit, over it together.
        [encode_frame(ids["multipart"], {}, [b"\xc0"]) + b"x" * 17 * MiB, b"x" * 17 * MiB],
        msgpack.packb([VERSION + 41, new_id(), {}, []]),  # no id to read: no answer
    ]
    _, records = workflow_records(2)
    good = new_id()
    replies = exchange(collector.url, [*frames, encode_frame(good, {}, list(
        map(pack_record, records)))], {good, *ids.values()})
    assert replies == {"ack": {good}, REFUSED: set(ids.values())}
    counted = {r["reason"]: r["n"] for r in fetch(
        collector.dsn, "SELECT reason, count(*) AS n FROM quarantine GROUP BY 1")}
    assert counted == {"malformed": 2, "bad_envelope": 1, "oversize": 2, "too_many_records": 1,
                       "unknown_version": 1}
