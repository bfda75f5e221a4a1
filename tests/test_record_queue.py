"""The sender's bounded queue: the caller's side counts payload bytes once per record, refuses
what does not fit (the sender counts it as dropped), says when to spill, and wakes the sender
thread only when it sleeps until woken."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from agent_shim import sender as sender_module
from agent_shim.config import ShimSettings
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
    monkeypatch.setattr(sender_module, "_LINGER_SECONDS", 0.5)
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
