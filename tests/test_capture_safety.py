"""Capture never raises into the program, whatever it is given, and every record it makes packs.

Arbitrary Python values (lone surrogates, NULs, cycles, huge ints, bytes, sets, tuple keys,
objects whose ``__str__`` and ``__repr__`` raise, 1,000+ levels of nesting) go through the
public tracker API into a list, then are cleaned and packed exactly as the sender does
(``Cleaner.clean_record``, then ``wire.pack_record``).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_shim.config import ShimSettings
from agent_shim.payload import CYCLE, DEEPER, MAX_DEPTH, Cleaner, snapshot
from agent_shim.records import Record, Span
from agent_shim.sender import RecordQueue
from agent_shim.tracker import Tracker
from agent_shim.wire import pack_record
from collector.tables import jsonb_text


class ListSink:
    """Queues records and spans as the sender does (a short span becomes one record when
    taken); cleaning and packing come later, in :func:`sent`."""

    def __init__(self) -> None:
        self.queue = RecordQueue(max_records=10**6, max_bytes=10**12)

    def submit(self, record: Record) -> None:
        assert self.queue.put(record) is not None

    def span_started(self, span: Span) -> None:
        assert self.queue.put_span(span) is not None

    def span_ended(self, span: Span) -> None:
        assert self.queue.end_span(span) is not None

    def flush(self, timeout: float) -> bool:
        return True

    def shutdown(self, timeout: float) -> bool:
        return True

    def forked(self) -> ListSink:
        return ListSink()


def sent(sink: ListSink) -> list[Record]:
    """What the sender would put in frames: each record cleaned, then packed."""
    cleaner = Cleaner()
    records = []
    for record in sink.queue.take_all():
        cleaned = cleaner.clean_record(dict(record))
        pack_record(cleaned)  # raises if a field is not msgpack-native or not valid UTF-8
        records.append(cleaned)
    return records


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class WrongStr:
    def __str__(self) -> Any:
        return 42


def nested(depth: int, leaf: Any = "leaf") -> Any:
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"level": value}
    return value


def cycle() -> Any:
    outer: dict[str, Any] = {"name": "outer"}
    outer["self"] = [outer, {"back": outer}]
    return outer


surrogates = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3)
texts = (st.text(max_size=20) | surrogates.map(lambda s: f"half {s}")
         | st.sampled_from(["half \ud83d", "nul\x00byte", "\udfff", "é\ud800x", ""]))
huge_ints = (st.sampled_from([2**64, -(2**63) - 1, 2**200])
             | st.builds(pow, st.just(10), st.just(5_000)))  # past str()'s 4,300 digits
hashables = (st.none() | st.booleans() | st.integers() | huge_ints | texts | st.binary(max_size=8)
             | st.tuples(st.integers(), texts) | st.frozensets(st.integers(), max_size=3))
scalars = (hashables | st.floats(allow_nan=True, allow_infinity=True)
           | st.builds(Unprintable) | st.builds(WrongStr) | st.builds(object)
           | st.builds(bytearray, st.binary(max_size=4)))
values = st.recursive(
    scalars,
    lambda inner: (st.lists(inner, max_size=4) | st.tuples(inner, inner)
                   | st.sets(hashables, max_size=4)
                   | st.dictionaries(hashables, inner, max_size=4)),
    max_leaves=12,
) | st.builds(cycle)
SLOTS = ("inputs", "outputs", "meta", "error", "agent", "subtype", "task", "name", "goal", "model",
         "event_type")


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(given_values=st.fixed_dictionaries({slot: values for slot in SLOTS}),
       deep_slot=st.sampled_from(SLOTS), deep_levels=st.integers(900, 1_500),
       tokens=st.integers() | huge_ints, step=st.integers(-(2**200), 2**200))
def test_capture_never_raises_and_every_record_packs(
        own_scope: None, given_values: dict[str, Any], deep_slot: str, deep_levels: int,
        tokens: Any, step: int) -> None:
    # The deep value is built here, not drawn: Hypothesis cannot print 1,000 levels.
    v = {**given_values, deep_slot: nested(deep_levels, given_values[deep_slot])}
    sink = ListSink()
    tracker = Tracker(ShimSettings(collector_urls=("inproc://capture-safety",)), sink)
    session = tracker.open_session(name=v["name"], meta=v["meta"])
    with tracker.run(v["task"], note=v["meta"]) as run:
        with run.phase(v["name"], extra=v["inputs"]), run.step(step, v["goal"], extra=v["outputs"]):
            tracker.event(v["event_type"], subtype=v["subtype"], agent_name=v["agent"],
                          inputs=v["inputs"], outputs=v["outputs"], meta=v["meta"],
                          error=v["error"])
            span = tracker.start_span(v["event_type"], subtype=v["subtype"], agent_name=v["agent"],
                                      inputs=v["inputs"], meta=v["meta"])
            tracker.end_span(span, outputs=v["outputs"], error=v["error"], meta=v["meta"],
                             subtype=v["subtype"])
            with tracker.span("tool_call", agent_name=v["agent"], inputs=v["inputs"]):
                tracker.cost(model=v["model"], agent_name=v["agent"], prompt_tokens=tokens,
                             completion_tokens=tokens, total_tokens=tokens, cost_usd=0.5)
    records = sent(sink)
    assert session in {r["id"] for r in records if r["k"] == "session"}
    # Nothing was dropped on the way, whatever the agent name or error (a bad one used to cost
    # the event and leave a span running): the explicit span, the tool span, step and phase.
    ends = [r for r in records if r["k"] == "event" and r.get("completed_at") is not None]
    assert len(ends) == 4
    for record in records:
        for field in ("inputs", "outputs", "meta"):
            if record.get(field) is not None:
                jsonb_text(record[field])  # the collector's encoding meets no deep nesting


def test_a_surrogate_in_error_or_agent_name_keeps_the_event_and_closes_the_span() -> None:
    sink = ListSink()
    tracker = Tracker(ShimSettings(collector_urls=("inproc://capture-safety",)), sink)
    span = tracker.start_span("tool_call", agent_name="coder \ud83d", inputs={"q": "x \udc00"})
    tracker.end_span(span, status="failed", error="boom \ud83d")
    span_record = sent(sink)[-1]  # its start and end as one record: it ended before sending
    assert span_record["agent_name"] == "coder \ufffd"
    assert span_record["inputs"] == {"q": "x \ufffd"}
    assert span_record["status"] == "failed" and span_record["error_message"] == "boom \ufffd"


def test_a_dict_with_a_surrogate_is_stored_as_that_dict() -> None:
    record = Cleaner().clean_record({"inputs": snapshot({"role": "user", "content": "half \ud83d",
                                                         "\udfff key": [1, "\ud800\ud800"]})})
    assert record["inputs"] == {"role": "user", "content": "half \ufffd",
                                "\ufffd key": [1, "\ufffd\ufffd"]}


def test_objects_huge_ints_bytes_sets_and_tuple_keys_become_plain_data() -> None:
    value = {"obj": Unprintable(), "wrong": WrongStr(), "big": 2**70, "huge": 10**5000,
             "raw": b"\x00\x01", "set": {3}, (1, "a"): "tuple key", frozenset({2}): "fs"}
    record = Cleaner().clean_record({"inputs": snapshot(value), "agent_name": Unprintable(),
                                     "error_message": b"bytes", "total_tokens": 2**70})
    wrong = record["inputs"].pop("wrong")
    assert wrong.startswith("<tests.test_capture_safety.WrongStr object at")  # its repr
    assert record["inputs"] == {
        "obj": "<unprintable Unprintable>",
        "big": str(2**70), "huge": "<16610-bit int>", "raw": "<2 bytes>", "set": [3],
        "(1, 'a')": "tuple key", "frozenset({2})": "fs"}
    assert record["agent_name"] == "<unprintable Unprintable>"
    assert record["error_message"] == "<5 bytes>" and record["total_tokens"] == str(2**70)
    pack_record(record)


def test_a_tuple_key_on_the_fast_path_is_kept_as_text() -> None:
    record = Cleaner().clean_record({"inputs": snapshot({(1, 2): "x", "y": [1, 2]})})
    assert record["inputs"] == {"(1, 2)": "x", "y": [1, 2]}


def depth_of(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    return 0


@pytest.mark.parametrize("levels", [MAX_DEPTH, MAX_DEPTH + 1, 300, 1_000, 5_000])
def test_nesting_is_cut_at_the_documented_depth_and_recorded(levels: int) -> None:
    record = Cleaner().clean_record({"inputs": snapshot(nested(levels)),
                                     "meta": snapshot({"keep": "me"})})
    inputs = record["inputs"]
    if levels <= MAX_DEPTH:
        assert inputs == nested(levels) and "_truncated" not in record["meta"]
        return
    assert depth_of(inputs) == MAX_DEPTH
    [(path, why)] = record["meta"]["_truncated"].items()
    assert why == "depth" and path.startswith("inputs")
    assert path.count(".level") + path.count("[0]") == MAX_DEPTH  # the steps to the cut
    assert record["meta"]["keep"] == "me"
    assert DEEPER in repr(inputs)
    jsonb_text(inputs)


def test_a_cycle_is_cut_where_it_closes() -> None:
    record = Cleaner().clean_record({"inputs": snapshot(cycle())})
    assert record["inputs"] == {"name": "outer", "self": [CYCLE, {"back": CYCLE}]}


class Opaque(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str")


def test_an_exception_whose_str_raises_reaches_the_program_unchanged(own_scope: None) -> None:
    sink = ListSink()
    tracker = Tracker(ShimSettings(collector_urls=("inproc://capture-safety",)), sink)
    with pytest.raises(Opaque):
        with tracker.run("task") as run, run.phase("planning"), tracker.span("tool_call"):
            raise Opaque()
    failed = [r for r in sent(sink) if r.get("status") == "failed"]
    # the span, the phase, the run, and the session the run opened
    assert {r["k"] for r in failed} == {"session", "run", "node", "event"}
    errors = {r["error_message"] for r in failed if r["k"] != "session"}
    assert errors == {"Opaque: Opaque()"}  # its repr
