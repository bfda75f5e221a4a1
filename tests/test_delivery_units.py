"""Delivery in memory: a fake socket whose acknowledgements, refusals, silence and reconnects the
test scripts, a fake clock, and a real spool on disk. The process-level guarantees are tested
end to end in test_delivery.py and test_delivery_faults.py; these pin each rule down."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from agent_shim.config import ShimSettings
from agent_shim.delivery import MAX_IGNORED, Delivery
from agent_shim.framing import DropCounts, Framer
from agent_shim.sender import RecordQueue
from agent_shim.spool import Spool
from agent_shim.wire import ACK, REFUSED, decode_frame, encode_frame, new_id, now_us, pack_record

RUN, SESSION, SENDER = new_id(), new_id(), bytes.fromhex("00000000000000a1")


def message(i: int, run: bytes = RUN) -> dict[str, Any]:
    # ``i`` numbers the record for the fake collector, which reads frames, not columns.
    return {"k": "event", "id": new_id(), "run_id": run, "session_id": SESSION,
            "event_type": "message", "meta": None, "inputs": None, "i": i,
            "timestamp": now_us()}


class FakeSocket:
    """A collector in memory: keeps every frame sent; ``up`` False refuses sends, as a DEALER
    socket with no connected peer does."""

    def __init__(self) -> None:
        self.up = True
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> bool:
        if self.up:
            self.sent.append(data)
        return self.up

    def seqs(self) -> list[int]:
        """The sequence number of each frame sent, in order (resends included)."""
        return [int.from_bytes(decode_frame(data)[1][8:], "big") for data in self.sent]

    def numbers(self) -> list[int]:
        """The ``i`` of each record sent, in order (resends included)."""
        return [record["i"] for data in self.sent for record in decode_frame(data)[3]]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Rig:
    """A delivery with its queue, fake socket and clock; ``pump`` as the sender thread does."""

    def __init__(self, tmp_path: Path, **overrides: Any) -> None:
        self.settings = ShimSettings(collector_urls=("tcp://fake:1",),
                                     spool_dir=tmp_path / "spool", **overrides)
        self.drops = DropCounts()
        self.framer = Framer(self.settings, self.drops, SENDER)
        self.spool = Spool(self.settings.spool_dir, self.settings.collector_urls,
                           self.settings.spool_max_bytes, SENDER.hex())
        self.socket = FakeSocket()
        self.clock = Clock()
        self.delivery = Delivery(self.settings, self.framer, self.drops, self.spool,
                                 self.socket, self.clock)
        self.queue = RecordQueue(self.settings.queue_size, self.settings.queue_max_bytes)

    def submit(self, *records: dict[str, Any]) -> None:
        for record in records:
            assert self.queue.put(record) is not None

    def pump(self, drain: bool = False) -> None:
        self.delivery.pump(self.queue, lambda: False, drain)

    def ack(self, *seqs: int) -> None:
        self.delivery.replied(ACK, [SENDER + seq.to_bytes(8, "big") for seq in seqs])

    def in_flight(self) -> list[int]:
        return sorted(frame.seq for frame in self.delivery.in_flight.values())

    def spooled(self) -> list[Path]:
        return sorted(self.spool.directory.glob("*.frame"))


def test_no_more_frames_than_the_window_are_in_flight(tmp_path: Path) -> None:
    rig = Rig(tmp_path, batch_max_events=1, window_frames=3)
    rig.submit(*(message(i) for i in range(10)))
    rig.pump()
    assert rig.socket.seqs() == [1, 2, 3] and len(rig.queue) == 7
    rig.pump()  # nothing acknowledged, nothing due again: nothing more is sent
    assert rig.socket.seqs() == [1, 2, 3]
    rig.ack(2)
    rig.pump()
    assert rig.socket.seqs() == [1, 2, 3, 4] and rig.in_flight() == [1, 3, 4]
    for seq in range(1, 11):
        rig.ack(seq)
        rig.pump()
        assert len(rig.delivery.in_flight) <= 3
    assert rig.socket.numbers() == list(range(10)) and not rig.delivery.in_flight


def test_a_frame_is_sent_again_after_ack_timeout_and_not_before(tmp_path: Path) -> None:
    rig = Rig(tmp_path, batch_max_events=1, window_frames=2, ack_timeout=10.0)
    rig.submit(message(0), message(1))
    rig.pump()
    first = list(rig.socket.sent)
    rig.clock.now += 9.9
    rig.pump()
    assert rig.socket.sent == first
    rig.clock.now += 0.2
    rig.pump()
    assert rig.socket.sent == first + first  # the same bytes: the collector stores them once


def test_everything_in_flight_is_sent_again_after_a_reconnect(tmp_path: Path) -> None:
    rig = Rig(tmp_path, batch_max_events=1, window_frames=4)
    rig.submit(*(message(i) for i in range(3)))
    rig.pump()
    rig.ack(2)
    rig.delivery.disconnected()
    rig.pump()  # at once, not after ack_timeout
    assert rig.socket.seqs() == [1, 2, 3, 1, 3]


def test_a_silent_collector_never_makes_a_frame_be_given_up(tmp_path: Path) -> None:
    # No acknowledgements at all: the collector (or its database) is away, not refusing.
    rig = Rig(tmp_path, batch_max_events=1, window_frames=2, ack_timeout=1.0)
    rig.submit(message(0), message(1))
    for _ in range(MAX_IGNORED * 3):
        rig.pump()
        rig.clock.now += 1.5
    assert rig.in_flight() == [1, 2] and rig.drops.header() == []
    assert rig.socket.seqs().count(1) == MAX_IGNORED * 3


def test_a_frame_ignored_while_others_are_acknowledged_is_given_up_and_counted(
        tmp_path: Path) -> None:
    rig = Rig(tmp_path, batch_max_events=2, window_frames=2, ack_timeout=1.0)
    rig.submit(*(message(i) for i in range(40)))
    for _ in range(MAX_IGNORED + 2):
        rig.pump()
        rig.ack(*(seq for seq in rig.in_flight() if seq != 1))
        rig.pump()
        rig.clock.now += 1.5
    assert 1 not in rig.in_flight()
    assert rig.socket.seqs().count(1) == MAX_IGNORED  # sent once, resent until given up
    assert rig.drops.header() == [[RUN, "unacknowledged", 2]]
    assert rig.drops.lost_own


def test_a_refused_frame_is_given_up_and_counted_and_other_replies_change_nothing(
        tmp_path: Path) -> None:
    rig = Rig(tmp_path, batch_max_events=3, window_frames=4)
    other_run = new_id()
    rig.submit(message(0), message(1), message(2, other_run), message(3), message(4))
    rig.pump()
    refused = SENDER + (1).to_bytes(8, "big")
    rig.delivery.replied(REFUSED, [refused])
    rig.delivery.replied(REFUSED, [refused, SENDER + (99).to_bytes(8, "big")])  # again; unknown
    rig.delivery.replied(None, [SENDER + (2).to_bytes(8, "big")])  # not a valid reply
    assert rig.in_flight() == [2]
    assert sorted(map(tuple, rig.drops.header())) == sorted([(RUN, "refused", 2),
                                                             (other_run, "refused", 1)])


def test_with_the_collector_away_the_queue_past_half_is_spilled_then_sent_in_order(
        tmp_path: Path) -> None:
    rig = Rig(tmp_path, batch_max_events=5, window_frames=1, queue_size=16)
    rig.socket.up = False
    rig.submit(*(message(i) for i in range(16)))
    rig.pump()
    # One frame waits in the window; past half the queue (8 records), one frame went to disk.
    assert rig.in_flight() == [1] and len(rig.queue) == 6
    spooled = rig.spooled()
    assert len(spooled) == 1 and [f.seq for f in rig.delivery.backlog] == [2]
    assert rig.delivery.backlog[0].data is None  # its bytes are on disk only
    on_disk = spooled[0].read_bytes()

    rig.socket.up = True
    while rig.delivery.in_flight or len(rig.queue) or rig.delivery.backlog:
        rig.pump()
        rig.ack(*rig.in_flight())
    assert rig.socket.numbers() == list(range(16))
    assert rig.socket.sent[1] == on_disk
    assert rig.spooled() == []  # deleted once acknowledged
    assert rig.drops.header() == []


def test_what_the_spool_cannot_take_is_counted(tmp_path: Path) -> None:
    rig = Rig(tmp_path, batch_max_events=5, window_frames=1, queue_size=16, spool_max_bytes=100)
    rig.socket.up = False
    rig.submit(*(message(i) for i in range(16)))
    rig.pump()
    assert rig.spooled() == [] and not rig.delivery.backlog
    assert rig.drops.header() == [[RUN, "spool_full", 5]]


def test_own_spooled_frames_go_first_then_the_queue_then_files_adopted_from_gone_processes(
        tmp_path: Path) -> None:
    rig = Rig(tmp_path, batch_max_events=2, window_frames=1)
    gone_owner = bytes.fromhex("00000000000000b2")
    gone = Spool(rig.settings.spool_dir, rig.settings.collector_urls, 10**9, gone_owner.hex())
    gone_run = new_id()
    for seq in (1, 2):
        gone.put(seq, encode_frame(gone_owner + seq.to_bytes(8, "big"), {},
                                   [pack_record(message(100 + seq, gone_run))]))
    gone.close()  # its process is gone: its lock is free

    rig.submit(*(message(i) for i in range(6)))
    first = rig.framer.pack(rig.queue.take, lambda: False)
    assert first is not None
    rig.delivery.spill(first)  # as past half the queue: on disk, in our backlog
    rig.delivery.adopt()
    while rig.delivery.in_flight or len(rig.queue) or rig.delivery.backlog \
            or rig.delivery.adopted:
        rig.pump()
        rig.delivery.replied(ACK, list(rig.delivery.in_flight))
    assert rig.socket.numbers() == [0, 1, 2, 3, 4, 5, 101, 102]
    assert rig.spooled() == []


def test_a_damaged_adopted_file_is_removed_and_what_it_held_counted(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    gone_owner = bytes.fromhex("00000000000000b3")
    gone = Spool(rig.settings.spool_dir, rig.settings.collector_urls, 10**9, gone_owner.hex())
    data = encode_frame(gone_owner + (1).to_bytes(8, "big"), {},
                        [pack_record(message(i)) for i in range(10)])
    path = gone.put(1, data[: len(data) // 2])
    gone.close()
    rig.delivery.adopt()
    rig.pump()
    assert path is not None and not path.exists() and rig.socket.sent == []
    [[run, reason, count]] = rig.drops.header()
    assert (run, reason) == (RUN, "spool_damaged") and 0 < count < 10
    assert not rig.drops.lost_own  # not this process's events


def test_at_exit_past_the_deadline_events_are_counted_and_run_ends_still_spooled(
        tmp_path: Path) -> None:
    rig = Rig(tmp_path, batch_max_events=2, window_frames=1)
    rig.socket.up = False
    run_end = {"k": "run", "id": RUN, "session_id": SESSION, "status": "completed",
               "completed_at": now_us()}
    rig.submit(message(0), message(1), message(2), run_end)
    rig.pump()  # one frame (0, 1) in flight, unsent
    rig.delivery.spool_pending(rig.queue, deadline=time.monotonic() - 1)
    assert not rig.delivery.in_flight and len(rig.queue) == 0
    [last] = rig.spooled()
    _, _, header, records = decode_frame(last.read_bytes())
    assert records == [run_end]
    assert sorted(map(tuple, header["drops"])) == [(RUN, "exit_timeout", 3)]


@pytest.mark.parametrize("deadline", [None, "later"])
def test_at_exit_within_the_deadline_everything_undelivered_is_spooled(
        tmp_path: Path, deadline: str | None) -> None:
    rig = Rig(tmp_path, batch_max_events=2, window_frames=1)
    rig.socket.up = False
    rig.submit(*(message(i) for i in range(7)))
    rig.pump()
    rig.delivery.spool_pending(rig.queue, None if deadline is None else time.monotonic() + 60)
    numbers = sorted(record["i"] for path in rig.spooled()
                     for record in decode_frame(path.read_bytes())[3])
    assert numbers == list(range(7)) and rig.drops.header() == []
