"""Hostile frames against a real collector process: its memory (RSS from /proc) stays within
the bound docs/operations.md gives, what it keeps afterwards is small, and /metrics stays small.

Each case is sent between two good frames; the second one's ack means the hostile input was
handled (batches are committed in arrival order)."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest
import zmq

from agent_shim.wire import VERSION, decode_reply, encode_frame, new_id

from .helpers.frames import good_records
from .helpers.support import CollectorProcess, fetch, free_port

MiB = 1024 * 1024


def _memory(pid: int) -> tuple[int, int]:
    """(resident now, resident peak) of a process, in bytes."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines())
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def _envelope(batch_id: bytes, header: dict[str, object], records: int) -> bytes:
    """A frame's head announcing ``records`` records; the caller appends their bytes."""
    packer = msgpack.Packer()
    return (packer.pack_array_header(4) + packer.pack(VERSION) + packer.pack(batch_id)
            + packer.pack(header) + packer.pack_array_header(records))


def nil_records() -> list[list[bytes]]:
    """1,000,000 nil records in a 1 MB frame."""
    return [[_envelope(new_id(), {}, 1_000_000) + b"\xc0" * 1_000_000]]


def bad_record_frames() -> list[list[bytes]]:
    """Three 2 MB frames of 10,000 distinct bad records each (an unknown kind)."""
    frames = []
    for _ in range(3):
        records = [msgpack.packb({"k": "no-such-kind", "id": new_id(), "pad": "x" * 160})
                   for _ in range(10_000)]
        frames.append([encode_frame(new_id(), {}, records)])
    return frames


def tiny_bad_records() -> list[list[bytes]]:
    """Three 2 MB frames of 2,000,000 one-byte records that are not maps."""
    return [[_envelope(new_id(), {}, 2_000_000) + b"\x01" * 2_000_000] for _ in range(3)]


def multipart(parts: int, part_bytes: int) -> Callable[[], list[list[bytes]]]:
    """One message of many parts, each under the per-part limit, far over it in total."""
    def make() -> list[list[bytes]]:
        head = _envelope(new_id(), {}, 1) + b"\xc6" + part_bytes.to_bytes(4, "big")
        return [[head + b"x" * (part_bytes - len(head)), *[b"x" * part_bytes] * (parts - 1)]]
    return make


def drop_headers() -> list[list[bytes]]:
    """Headers reporting drops: 50,000 distinct runs twice (over the per-header bound), then
    1,000 distinct unknown runs with 1,000 distinct reasons (within it)."""
    frames = []
    for entries in (50_000, 50_000, 1_000):
        drops = [[new_id(), f"reason-{new_id().hex()}", 7] for _ in range(entries)]
        frames.append([encode_frame(new_id(), {"drops": drops}, [])])
    return frames


CASES = {
    # case: (messages, extra collector flags, peak growth allowed, quarantine rows expected)
    "nil_records": (nil_records, (), 48 * MiB, 1),
    "bad_records": (bad_record_frames, (), 96 * MiB, 3 * 101),
    "tiny_bad_records": (tiny_bad_records, (), 96 * MiB, 3),
    # 24 parts as in the report, 8 MiB instead of 25 MiB each (this machine is shared): ZeroMQ
    # holds the whole message (192 MiB) before the first part can be read; the collector adds
    # little to that, where it used to hold the parts and their join besides (3x).
    "multipart": (multipart(24, 8 * MiB), ("--max-message-bytes", str(9 * MiB)),
                  192 * MiB + 48 * MiB, 1),
    "drop_headers": (drop_headers, (), 96 * MiB, 2 + 101),
}


def _send_and_wait(url: str, messages: list[list[bytes]]) -> None:
    _, records = good_records(10)
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.connect(url)
    try:
        for message in messages:
            sock.send_multipart(message)
        last = new_id()
        sock.send(encode_frame(last, {}, records))
        while True:
            assert sock.poll(60_000), "the collector stopped answering"
            if last in decode_reply(sock.recv())[1]:
                return
    finally:
        sock.close(linger=0)
        context.term()


@pytest.mark.parametrize("case", CASES)
def test_hostile_frames_stay_within_the_memory_bound(case: str, database: str,
                                                     tmp_path: Path) -> None:
    make, flags, allowed_peak, quarantine_rows = CASES[case]
    http = f"127.0.0.1:{free_port()}"
    collector = CollectorProcess(database, tmp_path, extra=(
        "--no-migrate", "--metrics-bind", http, *flags)).start()
    try:
        assert collector.process is not None
        pid = collector.process.pid
        _send_and_wait(collector.url, [])  # warm: a pool connection, a committed batch
        rss_before, _ = _memory(pid)
        messages = make()
        _send_and_wait(collector.url, messages)
        del messages
        rss_after, peak_after = _memory(pid)
        with urllib.request.urlopen(f"http://{http}/metrics", timeout=10) as response:
            metrics = response.read()
    finally:
        collector.kill()
    grown, peak = (rss_after - rss_before) / MiB, (peak_after - rss_before) / MiB
    print(f"{case}: peak +{peak:.0f} MiB, kept +{grown:.0f} MiB, /metrics {len(metrics)} bytes")
    assert peak_after - rss_before < allowed_peak, f"peak +{peak:.0f} MiB"
    assert rss_after - rss_before < 32 * MiB, f"kept +{grown:.0f} MiB"
    assert len(metrics) < 32 * 1024
    assert fetch(database, "SELECT count(*) FROM quarantine")[0][0] == quarantine_rows


def test_metrics_remember_a_bounded_number_of_drop_reporters() -> None:
    """Each new (run, sender, reason) costs memory until the bound, then old ones are forgotten;
    every drop is still counted, under ``other`` for reasons no shim gives."""
    import tracemalloc
    import uuid

    from collector.metrics import MAX_DROP_SENDERS, Metrics
    from collector.pipeline import Decoded
    from collector.tables import DROPS

    metrics = Metrics()

    def report(count: int) -> None:
        for i in range(count):
            row = DROPS.prepare({"run_id": uuid.uuid4().bytes, "sender": "s",
                                 "reason": f"made-up-{i}", "count": 2})
            metrics.decoded(Decoded(b"peer", new_id(), [(DROPS, row)]))

    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        report(MAX_DROP_SENDERS)
        at_bound = tracemalloc.get_traced_memory()[0]
        report(3 * MAX_DROP_SENDERS)
        beyond = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # Three times as many reporters again cost a fraction of the first ones (unbounded: 3x).
    assert beyond - at_bound < (at_bound - start) / 4, (at_bound - start, beyond - at_bound)
    assert metrics.value("cmbagent_shim_dropped_events_total", reason="other") == \
        2 * 4 * MAX_DROP_SENDERS
    assert len(metrics.exposition()) < 32 * 1024
