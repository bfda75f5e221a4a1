"""Hand-made frames, good and bad, sent over a raw ZeroMQ socket like a misbehaving client."""

from __future__ import annotations

import uuid

import msgpack
import zmq

from agent_shim.testing import recording_tracker
from agent_shim.wire import (
    MAX_FRAME_BYTES,
    VERSION,
    decode_reply,
    encode_frame,
    new_id,
    pack_record,
)

from .support import CollectorProcess, fetch, fetchval, wait_for


def good_records(count: int) -> tuple[bytes, list[bytes]]:
    """A run with ``count`` message events; its id and packed records."""
    tracker, sink = recording_tracker()
    with tracker.run("hand-made") as run:
        for i in range(count):
            tracker.event("message", inputs={"i": i})
    return run.id, [pack_record(r) for r in sink.records]


def bad_record_frames() -> list[bytes]:
    """Valid frames whose records are wrong in every way a record can be."""
    run = new_id()
    bad = [
        "not a map", 42, None, {"k": "no-such-kind"}, {"k": "event", "p": "sideways"},
        {"k": "event", "p": "point", "id": b"short", "run": run, "type": "message", "ts": 1},
        {"k": "event", "p": "point", "id": new_id(), "run": run, "type": 7, "ts": 1},
        {"k": "event", "p": "point", "id": new_id(), "run": run, "type": "x", "ts": "yesterday"},
        {"k": "cost", "p": "point", "id": new_id(), "run": run, "ts": 1, "cost_usd": float("nan")},
        {"k": "event", "p": "point", "id": new_id(), "run": run, "type": "x", "ts": 1,
         "depth": 2**63},
    ]
    # Version 1 (its phase and keys): what a spool written before version 2 holds.
    return [encode_frame(new_id(), {}, [msgpack.packb(b, use_bin_type=True) for b in bad],
                         version=1)]


def garbage_frames() -> list[bytes]:
    return [
        b"",
        b"\xc1\xc1\xc1 not msgpack at all",
        msgpack.packb({"a": "map, not an array"}),
        msgpack.packb([VERSION + 41, new_id(), {}, []]),  # a protocol from the future
        msgpack.packb([VERSION, b"short id", {}, []]),
        msgpack.packb([VERSION, new_id(), "header", []]),
        msgpack.packb([VERSION, new_id(), {}, []])[:-1] + b"\xdc",  # truncated
        b"\x94" + b"\x01" + b"\xc4\x10" + bytes(16) + b"\x80" + b"\xdd\xff\xff\xff\xff",  # huge
        encode_frame(new_id(), {}, [b"x" * (MAX_FRAME_BYTES + 1)]),  # oversize
    ]


def exercise_bad_input(collector: CollectorProcess, kind: str) -> None:
    """Bad frames interleaved with good ones: the good stored, the bad quarantined and counted."""
    bad = garbage_frames() if kind == "garbage" else bad_record_frames()
    run, records = good_records(len(bad) + 1)
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.connect(collector.url)
    good_ids = []
    try:
        for i, frame in enumerate(bad):
            batch_id = new_id()
            good_ids.append(batch_id)
            parts = len(bad) + 1
            chunk = records[i * len(records) // parts:(i + 1) * len(records) // parts]
            sock.send(encode_frame(batch_id, {}, chunk))
            sock.send(frame)
        batch_id = new_id()
        good_ids.append(batch_id)
        sock.send(encode_frame(batch_id, {}, records[len(bad) * len(records) // (len(bad) + 1):]))
        acked: set[bytes] = set()
        while not acked >= set(good_ids):
            assert sock.poll(20_000), f"acks missing: {len(set(good_ids) - acked)}"
            acked.update(decode_reply(sock.recv())[1])
    finally:
        sock.close(linger=0)
        context.term()

    assert collector.alive(), collector.log_text()
    assert fetchval(collector.dsn, "SELECT count(*) FROM execution_events WHERE run_id = $1",
                    uuid.UUID(bytes=run)) == len(bad) + 1
    reasons = wait_for(lambda: fetch(collector.dsn,
                                     "SELECT reason, count(*) AS n FROM quarantine GROUP BY 1"))
    counted = {r["reason"]: r["n"] for r in reasons}
    if kind == "garbage":
        assert counted == {"malformed": 4, "bad_envelope": 3, "unknown_version": 1, "oversize": 1}
    else:
        # A value of the wrong type is one its column cannot hold: the detail names the column.
        assert counted == {"bad_record": 4, "bad_value": 5, "unknown_kind": 1}
    assert fetchval(collector.dsn, "SELECT bool_and(payload_size > 0 OR reason = 'malformed') "
                    "FROM quarantine")
