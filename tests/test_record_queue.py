"""The sender's bounded queue: the caller's side counts payload bytes once per record, refuses
what does not fit (the sender counts it as dropped), says when to spill, and wakes the sender
thread only when it sleeps until woken."""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from agent_shim import sender as sender_module
from agent_shim.config import ShimSettings
from agent_shim.context import Scope
from agent_shim.payload import thaw
from agent_shim.records import Record, Span
from agent_shim.sender import RecordQueue, Sender
from agent_shim.wire import new_id

from .helpers.support import wait_for


def record(payload_bytes: int, meta_bytes: int = 0) -> dict[str, Any]:
    return {"k": "event", "id": new_id(), "run_id": new_id(), "inputs": b"x" * payload_bytes,
            "outputs": None, "meta": b"m" * meta_bytes or None}


def test_a_record_past_the_byte_bound_is_refused_and_the_queue_is_unchanged() -> None:
    queue = RecordQueue(max_records=100, max_bytes=1_000)
    assert queue.put(record(400, 100)) is False  # 500 bytes: half, not past it
    assert queue.put(record(250)) is True  # 750 > 500: past half, time to spill
    assert queue.put(record(251)) is None  # 750 + 251 > 1,000: not queued
    assert len(queue) == 2 and queue.payload_bytes() == 750
    assert queue.put(record(250)) is True  # exactly at the bound fits
    assert queue.put(record(0)) is True  # no payload: only the record bound applies
    assert queue.payload_bytes() == 1_000


def test_a_record_past_the_record_bound_is_refused() -> None:
    # Half of 4 records is 2: the third is past half, the fifth does not fit.
    queue = RecordQueue(max_records=4, max_bytes=10**6)
    assert [queue.put(record(1)) for _ in range(5)] == [False, False, True, True, None]
    assert len(queue) == 4


def test_taking_frees_the_bytes_and_past_half_says_when_to_spill() -> None:
    queue = RecordQueue(max_records=10, max_bytes=1_000)
    first = record(300)
    for r in (first, record(300)):
        queue.put(r)
    assert queue.past_half()  # 600 bytes > 500
    assert queue.take() is first
    assert queue.payload_bytes() == 300 and not queue.past_half()
    for _ in range(5):
        queue.put(record(0))
    assert len(queue) == 6 and queue.past_half()  # 6 records > 5
    assert len(queue.take_all()) == 6 and queue.take() is None
    assert queue.payload_bytes() == 0


def test_an_empty_queue_starts_its_byte_count_over() -> None:
    queue = RecordQueue(max_records=10, max_bytes=1_000)
    queue.put(record(400))
    queue._bytes_in -= 100  # as when two callers' concurrent += lost an update
    queue.take()
    assert queue.payload_bytes() == -100
    queue.recount()
    assert queue.payload_bytes() == 0 and queue.put(record(1_000)) is True


def test_a_busy_program_never_wakes_the_sender_thread_and_an_idle_one_does(
        tmp_path: Path, monkeypatch: Any) -> None:
    # Nothing listens at port 9: frames stay unsent, the thread keeps taking records.
    monkeypatch.setattr(sender_module, "LINGER_SECONDS", 0.5)
    sender = Sender(ShimSettings(collector_urls=("tcp://127.0.0.1:9",), spool_dir=tmp_path,
                                 exit_timeout=0.5))
    wakes: list[float] = []
    wake = sender._wake
    monkeypatch.setattr(sender, "_wake", lambda: (wakes.append(time.monotonic()), wake()))
    try:
        sender.submit(record(10))  # the first record starts the thread
        for _ in range(100):  # a busy stretch: a record every millisecond
            time.sleep(0.001)
            sender.submit(record(10))
        assert len(wakes) == 1, "a submit woke the sender thread while records kept coming"
        wait_for(lambda: len(sender._queue) == 0, timeout=5)  # taken without being woken
        time.sleep(1.0)  # past the linger: the thread now sleeps until woken
        sender.submit(record(10))
        assert len(wakes) == 2
        wait_for(lambda: len(sender._queue) == 0, timeout=5)
    finally:
        sender.shutdown(0.5)


# --- spans: a short span is one record --------------------------------------------------------

SCOPE = Scope(run=new_id(), session=new_id())


def span(inputs: Any = "question", meta: Any = None) -> Span:
    return Span(SCOPE, new_id(), "tool_call", "start subtype", "coder", inputs, meta)


def test_a_span_that_ends_before_the_thread_takes_it_is_one_record() -> None:
    queue = RecordQueue(max_records=10, max_bytes=10_000)
    s = span(meta={"model": "m", "kept": 1})
    assert queue.put_span(s) is False
    s.end("failed", "answer", {"model": "n", "tokens": 3}, None, "boom")
    assert queue.end_span(s) is False  # folded: nothing more is queued
    assert len(queue) == 1 and queue.payload_bytes() == s.start_bytes() + s.end_bytes()
    (whole,) = queue.take_all()
    assert whole["started_at"] == whole["timestamp"] == s.started_at
    assert whole["completed_at"] == s.completed_at > s.started_at - 1
    assert (whole["status"], whole["error_message"]) == ("failed", "boom")
    assert whole["event_subtype"] == "start subtype"  # the end said none: the start's stays
    assert thaw(whole["inputs"]) == "question" and thaw(whole["outputs"]) == "answer"
    assert whole["meta"] == {"model": "n", "kept": 1, "tokens": 3}  # merged, the end's win
    assert queue.payload_bytes() == 0


def test_a_span_taken_while_open_sends_its_start_then_its_end() -> None:
    queue = RecordQueue(max_records=10, max_bytes=10_000)
    s = span(meta={"a": 1})
    queue.put_span(s)
    (start,) = queue.take_all()
    assert start["status"] == "running" and "completed_at" not in start
    s.end("completed", "answer", None, "end subtype", None)
    assert queue.end_span(s) is False  # queued: the thread takes it next
    (end,) = queue.take_all()
    assert end["status"] == "completed" and end["event_subtype"] == "end subtype"
    assert end["completed_at"] == s.completed_at and "started_at" not in end
    assert queue.payload_bytes() == 0


def test_metas_that_are_not_both_maps_are_sent_as_start_and_end() -> None:
    # The collector merges maps; a list and a map are its to store, not ours to combine.
    queue = RecordQueue(max_records=10, max_bytes=10_000)
    s = span(meta=["a list"])
    queue.put_span(s)
    s.end("completed", None, {"b": 2}, None, None)
    queue.end_span(s)
    assert len(queue) == 1
    start = queue.take()
    assert len(queue) == 1  # the end waits right behind its start
    end = queue.take()
    assert start is not None and end is not None and queue.take() is None
    assert start["status"] == "running" and thaw(start["meta"]) == ["a list"]
    assert end["status"] == "completed" and thaw(end["meta"]) == {"b": 2}


def test_the_thread_and_callers_racing_make_each_span_whole_or_start_and_end_once() -> None:
    # The caller ends spans while the thread takes them: whichever claims a span first decides,
    # so each span is either one record or a start and an end, never lost or sent twice.
    queue = RecordQueue(max_records=10**6, max_bytes=10**9)
    spans = [span() for _ in range(20_000)]
    taken: list[Record] = []
    done = threading.Event()

    def thread() -> None:
        while not done.is_set() or len(queue):
            taken.extend(queue.take_all())

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    worker = threading.Thread(target=thread)
    worker.start()
    try:
        for i, s in enumerate(spans):
            queue.put_span(s)
            if i % 3 == 0:
                time.sleep(0)  # gives the thread the GIL: it may take this start first
            s.end("completed", "out", None, None, None)
            queue.end_span(s)
    finally:
        done.set()
        worker.join()
        sys.setswitchinterval(previous)
    by_span: dict[bytes, list[str]] = {}
    for r in taken:
        by_span.setdefault(r["id"], []).append(
            "whole" if "started_at" in r and "completed_at" in r else
            "start" if "started_at" in r else "end")
    shapes = Counter(tuple(v) for v in by_span.values())
    assert len(by_span) == len(spans)
    assert set(shapes) <= {("whole",), ("start", "end")}, shapes
    assert shapes[("start", "end")] > 0 and shapes[("whole",)] > 0, shapes  # both were raced
    queue.recount()
    assert queue.payload_bytes() == 0


def test_a_span_whose_start_was_refused_or_queued_elsewhere_ends_as_a_record(
        tmp_path: Path, monkeypatch: Any) -> None:
    sender = Sender(ShimSettings(collector_urls=("tcp://127.0.0.1:9",), spool_dir=tmp_path,
                                 queue_size=2))
    monkeypatch.setattr(sender, "_wake", lambda: None)  # no thread: what is queued stays
    try:
        sender.submit(record(1))
        sender.submit(record(1))
        refused = span()
        sender.span_started(refused)  # the queue is full: refused and counted
        assert refused.holder is None and sender._drops.lost_own
        forked = span()  # started before a fork: the parent's queue holds its start
        forked.holder = RecordQueue(10, 10_000)
        sender._queue.take_all()
        for s in (refused, forked):
            s.end("completed", "out", None, None, None)
            sender.span_ended(s)
        ends = sender._queue.take_all()
        assert [(r["id"], r["status"], "started_at" in r) for r in ends] == [
            (refused.id, "completed", False), (forked.id, "completed", False)]
        assert sender._drops.header() == [[SCOPE.run, "queue_full", 1]]
    finally:
        sender.shutdown(0.2)
