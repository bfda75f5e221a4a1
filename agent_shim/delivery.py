"""Delivery: frames kept until the collector acknowledges them (after its database commit).

- A window of at most ``window_frames`` frames is in flight. A frame is sent again after
  ``ack_timeout``, or when the connection was lost; the collector stores each event once, so
  that is harmless. A frame the collector refuses, or ignores through :data:`MAX_IGNORED`
  resends while it acknowledges others, is given up and its events are counted.
- What the window cannot take is spilled to the spool once the queue passes half its bounds
  (or, for a flush, all of it) and sent from there later, oldest first: this process's spooled
  frames, then the queue, then files adopted from processes that are gone.
- At exit, what is undelivered is cleaned and written to the spool; what the deadline or the
  disk does not allow is counted, and the counts go last, in room the spool reserves for them.

One thread at a time uses a :class:`Delivery` (the sender's, or shutdown's caller once that
thread is gone); it never blocks: :meth:`Transport.send` refuses rather than waits.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Protocol

from .config import ShimSettings
from .framing import DropCounts, Frame, Framer, Record, readable_records, run_of
from .spool import RESERVE_BYTES, Spool, SpoolFile
from .wire import ACK, REFUSED, WireError, decode_frame

log = logging.getLogger(__name__)

#: Resends of one frame, each while the collector acknowledged others, before it is given up.
MAX_IGNORED = 5
#: Records that give a run its shape; small, so exit spools them even after its deadline.
_STRUCTURE = frozenset({"session", "run", "node", "edge"})
_LAST_FRAME_BYTES = RESERVE_BYTES // 2  # the rest of the reserve is for the header's counts


class Transport(Protocol):
    """Where frames go: a ZeroMQ socket in production, a list in unit tests."""

    def send(self, data: bytes) -> bool:
        """Hand a frame over without blocking; ``False`` if no collector can take it now."""
        ...


class Offline:
    """No collector yet (or ever, once the sender failed): every frame waits or is spooled."""

    def send(self, data: bytes) -> bool:
        return False


class Source(Protocol):
    """The queue of records waiting to be framed (the sender's bounded queue)."""

    def __len__(self) -> int: ...

    def take(self) -> Record | None:
        """The oldest record, or ``None`` if there is none."""
        ...

    def take_all(self) -> list[Record]: ...

    def past_half(self) -> bool:
        """Past half its bound in records or bytes: time to spill to the spool."""
        ...


class Delivery:
    """The frames of one sender between framing and the collector's acknowledgement."""

    def __init__(self, settings: ShimSettings, framer: Framer, drops: DropCounts, spool: Spool,
                 transport: Transport | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window = settings.window_frames
        self.ack_timeout = settings.ack_timeout
        self.framer = framer
        self.spool = spool
        self._drops = drops
        self.transport: Transport = transport or Offline()
        self._clock = clock
        self.acks = 0  # acknowledgements received
        self.in_flight: dict[bytes, Frame] = {}
        self.backlog: deque[Frame] = deque()  # this process's spooled frames, oldest first
        self.adopted: deque[SpoolFile] = deque()  # files left by processes that are gone

    # --- what the collector says -------------------------------------------------------------

    def adopt(self) -> None:
        """Take over the spooled files of processes that are gone, to send after our own."""
        self.adopted = self.spool.adopt()

    def replied(self, kind: str | None, batch_ids: list[bytes]) -> None:
        """A reply from the collector: acknowledged (committed) or refused for good."""
        for batch_id in batch_ids:
            if kind == ACK:
                self.acks += 1
                frame = self.in_flight.pop(batch_id, None)
                if frame is not None and frame.path is not None:
                    self.spool.remove(frame.path)
            elif kind == REFUSED and batch_id in self.in_flight:
                self._give_up(self.in_flight[batch_id], "refused")

    def disconnected(self) -> None:
        """A connection was lost: what it held may be lost too, so all in flight is sent again."""
        for frame in self.in_flight.values():
            frame.sent_at = 0.0

    # --- sending -------------------------------------------------------------------------------

    def pump(self, queue: Source, stop: Callable[[], bool], drain: bool = False) -> None:
        """Send what is due, fill the window, spill to disk what the window cannot take.

        ``stop``: time to stop cleaning and packing; ``drain``: spill the whole queue past the
        window, not only what passes half its bounds.
        """
        now = self._clock()
        for frame in list(self.in_flight.values()):
            if frame.sent_at == 0.0 or now - frame.sent_at > self.ack_timeout:
                if frame.sent_at and self.acks > frame.acks_at_send:
                    frame.ignored += 1
                    if frame.ignored >= MAX_IGNORED:
                        self._give_up(frame, "unacknowledged")
                        continue
                if not self._send(frame, now):
                    break
        while len(self.in_flight) < self.window and not stop():
            waiting = self._next_frame(queue, stop)
            if waiting is None:
                break
            self.in_flight[waiting.batch_id] = waiting
            self._send(waiting, now)
        while (drain and len(queue) or queue.past_half()) and not stop():
            packed = self.framer.pack(queue.take, stop)
            if packed is not None:
                self.spill(packed)

    def window_full(self) -> bool:
        return len(self.in_flight) >= self.window

    def seconds_to_resend(self, now: float) -> float | None:
        """When the oldest frame in flight is due again (``inf``: not sent since a reconnect,
        so it waits for the connection); ``None`` if nothing is in flight."""
        if not self.in_flight:
            return None
        oldest = min(frame.sent_at for frame in self.in_flight.values())
        return math.inf if oldest == 0.0 else oldest + self.ack_timeout - now

    def first_pending(self) -> int | None:
        """The sequence number of our oldest frame not yet acknowledged, if any."""
        return min((f.seq for f in (*self.in_flight.values(), *self.backlog) if f.own),
                   default=None)

    def undelivered(self) -> int:
        """Frames in flight or spooled by this process (adopted files not counted)."""
        return len(self.in_flight) + len(self.backlog)

    def unsaved_bytes(self) -> int:
        """Bytes in flight that are not on disk yet (what exit would have to write)."""
        return sum(len(f.data or b"") for f in self.in_flight.values() if f.path is None)

    def _send(self, frame: Frame, now: float) -> bool:
        if not self.transport.send(frame.data or b""):
            return False
        frame.sent_at = now
        frame.acks_at_send = self.acks
        return True

    def _give_up(self, frame: Frame, reason: str) -> None:
        """Stop sending a frame the collector will not store; its events are counted."""
        del self.in_flight[frame.batch_id]
        runs = frame.runs or Counter(run_of(r) for r in readable_records(frame.data or b""))
        log.warning("a frame of %d events is given up (%s)%s", sum(runs.values()), reason,
                    f"; removed {frame.path}" if frame.path else "")
        self._drops.count(runs, reason, frame.own)
        if frame.path is not None:
            self.spool.remove(frame.path)

    def _next_frame(self, queue: Source, stop: Callable[[], bool]) -> Frame | None:
        """The oldest frame waiting: our spooled frames, then the queue, then adopted files."""
        while self.backlog:
            frame = self.backlog.popleft()
            if self._load(frame):
                return frame
        if len(queue):
            return self.framer.pack(queue.take, stop)
        while self.adopted:
            adopted = self._adopt(self.adopted.popleft())
            if adopted is not None:
                return adopted
        return None

    def _load(self, frame: Frame) -> bool:
        try:
            frame.data = frame.path.read_bytes() if frame.path else frame.data
            return True
        except OSError as exc:
            log.warning("spooled frame %s is unreadable; its events are counted as dropped: %s",
                        frame.path, exc)
            self._drops.count(frame.runs, "spool_damaged")
            return False

    def _adopt(self, file: SpoolFile) -> Frame | None:
        """An adopted file as a frame to send; a damaged frame is removed and counted."""
        try:
            data = file.path.read_bytes()
        except OSError as exc:
            log.warning("spooled file %s is unreadable and is skipped: %s", file.path, exc)
            return None
        try:
            decode_frame(data)
        except WireError as exc:
            runs = Counter(run_of(r) for r in readable_records(data))
            log.warning("spooled frame %s is damaged (%s): removed; %d of its events could be "
                        "read and are counted as dropped", file.path, exc, sum(runs.values()))
            self._drops.count(runs, "spool_damaged", own=False)
            self.spool.remove(file.path)
            return None
        return Frame(0, file.batch_id, data, Counter(), path=file.path, own=False)

    # --- the spool -----------------------------------------------------------------------------

    def spill(self, frame: Frame) -> None:
        """Move a frame's bytes to disk; if the spool cannot take it, its events are dropped."""
        if frame.path is None:
            frame.path = self.spool.put(frame.seq, frame.data or b"")
            if frame.path is None:
                self._drops.count(frame.runs, "spool_full", frame.own)
                return
        frame.data = None
        if frame.own and frame.batch_id not in self.in_flight:
            self.backlog.append(frame)

    def spool_pending(self, queue: Source, deadline: float | None) -> None:
        """Clean and write what is undelivered to the spool, by ``deadline`` if one is given;
        what the deadline or the disk does not allow is counted."""
        for frame in list(self.in_flight.values()):
            if frame.own and frame.path is None:
                if _past(deadline):
                    self._drops.count(frame.runs, "exit_timeout")
                else:
                    self.spill(frame)
        self.in_flight.clear()
        while len(queue) and not _past(deadline):
            packed = self.framer.pack(queue.take, lambda: _past(deadline))
            if packed is not None:
                self.spill(packed)
        self._spool_last(queue.take_all())

    def _spool_last(self, late: list[Record]) -> None:
        """The last frame, in the room the spool reserves for it: every drop count, and the ends
        of runs and nodes that exit had no time for, so that they do not stay ``running``."""
        closing: list[bytes] = []
        room = _LAST_FRAME_BYTES
        for record in late:
            data = self.framer.encode(record) if record.get("k") in _STRUCTURE else b""
            if data and len(data) <= room:
                closing.append(data)
                room -= len(data)
            elif data is not None:  # None: encode has counted it
                self._drops.count_record(record, "exit_timeout")
        if closing or self._drops.header():
            frame = self.framer.frame(closing, Counter())
            self.spool.put_last(frame.seq, frame.data or b"")


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline
