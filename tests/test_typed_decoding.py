"""The typed decoding of version 2 frames (msgspec) against the record-by-record path: for any
frame, what it accepts is exactly what the checked path makes, and anything else is left to it."""

from __future__ import annotations

import math

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_shim.testing import recording_tracker
from agent_shim.wire import encode_frame, new_id, pack_record
from collector.pipeline import Decoded, decode, decode_checked, decode_typed
from collector.tables import DROPS, EVENTS, KINDS, MAX_TEXT

MAX_RECORDS = 10_000


def _workflow_records() -> list[dict]:
    """What a tracker sends: a run, a step node, events, a span, a cost."""
    tracker, sink = recording_tracker()
    with tracker.run("typed") as run:
        with run.step(1, "plan"):
            tracker.event("message", agent_name="planner",
                          inputs={"content": "hello", "n": 1.5}, meta={"i": 1})
            with tracker.span("tool_call", agent_name="planner"):
                pass
            tracker.cost(model="gpt-4o", prompt_tokens=10, completion_tokens=5, cost_usd=0.01)
    return sink.records


def _outcome(decoded: Decoded) -> tuple:
    """What a decoding made, but the time a drop count was received."""
    rows = [(table, row[:-1] if table is DROPS else row) for table, row in decoded.rows]
    return (decoded.batch_id, decoded.refused_id, rows,
            [(q.reason, q.detail, q.payload, q.count) for q in decoded.quarantined])


def _frame(records: list, header: dict | None = None) -> bytes:
    return encode_frame(new_id(), header or {},
                        [msgpack.packb(r, use_bin_type=True) for r in records])


def test_a_tracker_s_frame_is_decoded_typed_into_the_rows_the_checked_path_makes() -> None:
    records = _workflow_records()
    assert {r["k"] for r in records} >= {"run", "node", "event", "cost"}
    frame = encode_frame(new_id(), {"drops": [[records[0]["id"], "queue_full", 3]]},
                         [pack_record(r) for r in records])

    typed = decode_typed(b"peer", frame, MAX_RECORDS)

    assert typed is not None  # the fast path is taken for what trackers send
    assert _outcome(typed) == _outcome(decode_checked(b"peer", frame, MAX_RECORDS))
    assert len(typed.rows) == len(records) + 1 and typed.quarantined == []


def test_every_table_s_record_type_is_derived_from_its_columns() -> None:
    for kind, table in KINDS.items():
        record = {"k": kind, **{c.name: None for c in table.columns if not c.needed}}
        # Only the required columns missing: the typed path declines, the checked one names it.
        assert decode_typed(b"p", _frame([record]), MAX_RECORDS) is None
        assert decode_checked(b"p", _frame([record]), MAX_RECORDS).quarantined[0].reason == \
            "bad_record"


# Values a hostile or buggy client may put in any column: each must come out of the typed path
# as the checked path makes it, or be left to that path.
hostile = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(),  # msgpack's ints
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 2**31, 2**63, -(2**63), 2**64 - 1]),
    st.text(max_size=20), st.sampled_from(["", "a\x00b", "x" * (MAX_TEXT + 1), "ü" * MAX_TEXT]),
    st.binary(max_size=20), st.binary(min_size=16, max_size=16),
    st.just(msgpack.ExtType(5, b"ext")),
    st.recursive(st.none() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=5)
                 | st.binary(max_size=3),
                 lambda children: st.lists(children, max_size=3)
                 | st.dictionaries(st.text(max_size=4) | st.integers(0, 3), children, max_size=3),
                 max_leaves=8),
)
column_names = st.sampled_from(sorted({c.name for t in KINDS.values() for c in t.columns}
                                      | {"k", "p", "ts", "unknown"}))


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 5), st.dictionaries(column_names, hostile, min_size=1, max_size=3))
def test_any_change_to_a_record_decodes_as_the_checked_path_decodes_it(which: int,
                                                                        changes: dict) -> None:
    records = _workflow_records()
    records[which % len(records)].update(changes)
    frame = _frame(records)

    typed = decode_typed(b"peer", frame, MAX_RECORDS)

    if typed is not None:
        assert _outcome(typed) == _outcome(decode_checked(b"peer", frame, MAX_RECORDS))
    assert _outcome(decode(b"peer", frame, 8 << 20)) == _outcome(
        decode_checked(b"peer", frame, MAX_RECORDS))


def test_a_value_orjson_refuses_is_stored_as_python_s_encoder_writes_it() -> None:
    """Keys that are not text, NaN (orjson would write null), bytes: the typed path declines the
    frame and the checked one stores them as before."""
    records = _workflow_records()
    event = next(r for r in records if r["k"] == "event" and r.get("inputs"))
    event["inputs"] = {"big": 2**64 - 1, 1: "int key", "nan": math.nan, "b": b"\x01"}
    frame = _frame(records)

    assert decode_typed(b"peer", frame, MAX_RECORDS) is None
    decoded = decode(b"peer", frame, 8 << 20)
    row = next(row for table, row in decoded.rows if table is EVENTS
               and row[EVENTS.position["id"]] == event["id"])
    assert row[EVENTS.position["inputs"]] == \
        '{"big":18446744073709551615,"1":"int key","nan":"nan","b":"b\'\\\\x01\'"}'


def test_a_jsonb_value_too_deep_is_quarantined_as_bad_value_naming_its_column() -> None:
    records = _workflow_records()
    event = next(r for r in records if r["k"] == "event" and r.get("inputs"))
    deep: list = []
    for _ in range(300):
        deep = [deep]
    event["inputs"] = deep
    decoded = decode(b"peer", _frame(records), 8 << 20)
    (refused,) = decoded.quarantined
    assert refused.reason == "bad_value" and "execution_events.inputs" in refused.detail
    assert len(decoded.rows) == len(records) - 1
