"""The sender's engine: one bounded queue, one daemon thread, explicit flush and shutdown.

Callers only append to the queue (and, when the thread sleeps until woken or the queue passes
half its byte bound, write one byte to wake it). While records keep coming the thread looks for
them every ``flush_interval`` on its own: a wake is a system call that hands the GIL to the
thread, which a busy program would pay for again and again. The thread owns the rest:
:mod:`.framing` cleans and packs records into frames, :mod:`.delivery` sends them (over
:mod:`.transport`'s DEALER socket) and keeps every frame until the collector acknowledges it
after its database commit. Every record handed over ends in one of three places: the
database, the spool (delivered by a later process), or a drop count that travels in frame
headers to its stored run:

- a window of frames in flight, each sent again until acknowledged, refused, or ignored while
  others are acknowledged (:mod:`.delivery`);
- when the window is full and the queue passes half its bound (in records or in payload bytes),
  the oldest events are packed into frames on disk (the spool) and sent from there later; at the
  bound, events are dropped;
- at exit, it delivers until shortly before the deadline, then cleans and spools what is left
  (nothing reaches the disk uncleaned); what the deadline or the disk does not allow is counted,
  and the counts are written in room reserved for them;
- if the thread dies (wrong Curve settings, for instance), the error is logged once, what it held
  is spooled, later records are kept within the bounds and spooled at exit for a process that
  can deliver them, and ``flush`` returns False.
"""

from __future__ import annotations

import enum
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import zmq

from . import records
from .config import ShimSettings
from .delivery import Delivery
from .framing import DropCounts, Framer, Record, payload_bytes, run_of
from .records import Span
from .spool import Spool
from .transport import SettingsError, ZmqTransport

log = logging.getLogger(__name__)

#: At exit, delivering stops in time to clean and write the rest to the spool at these (slow)
#: speeds, plus a fixed margin: queued payloads must be cleaned first, packed frames only written.
_CLEAN_BYTES_PER_SECOND = 10 * 1024 * 1024
_SPOOL_BYTES_PER_SECOND = 40 * 1024 * 1024
_SPOOL_SECONDS = 0.1
#: How long after the last record the thread keeps looking for new ones every ``flush_interval``
#: before it sleeps until a caller wakes it.
LINGER_SECONDS = 1.0


class Mode(enum.Enum):
    """What the sender does with a record handed to it."""

    OPEN = "open"  # queue it for delivery
    CLOSING = "closing"  # count it as dropped (``after_shutdown``): shutdown has begun
    FAILED = "failed"  # the thread died: keep it within the bounds, spool it at exit


# The caller's hot path compares with these: looking a member up on its enum class costs more
# (tens of ns in CPython 3.11) than the rest of a comparison.
_OPEN, _CLOSING = Mode.OPEN, Mode.CLOSING


#: Who claimed an open span first: the thread taking its start, or the caller ending it.
_TAKEN, _ENDED = object(), object()


class RecordQueue:
    """Records and open spans waiting for the thread, bounded in count and in payload bytes.

    One producer side (any caller thread) and one consumer (the sender thread): the deque is
    thread safe, and the byte count is two counters each written by one side only, so no lock
    is needed; the consumer re-synchronises them (:meth:`recount`) whenever the queue is empty.

    A span is queued when it starts. Its end is folded into that entry if the thread has not
    taken it yet (one record: :func:`records.span_whole`), else queued as an entry of its own.
    Which of the two happened is decided without a lock: each side appends its mark to the
    span's ``claims`` (``list.append`` is atomic) and the first mark wins.
    """

    def __init__(self, max_records: int, max_bytes: int) -> None:
        self._records: deque[tuple[Record | Span, int]] = deque()  # with its payload bytes
        self._next: Record | None = None  # a span's end, due right after its start
        self._max_records = max_records
        self._max_bytes = max_bytes
        self._half_records = max_records // 2
        self.half_bytes = max_bytes // 2
        self._bytes_in = 0
        self._bytes_out = 0

    def __len__(self) -> int:
        return len(self._records) + (self._next is not None)

    def put(self, record: Record) -> bool | None:
        """Append a record; returns whether the queue is now past half its bounds (time for the
        thread to spill), or ``None`` if the record does not fit (it is not queued)."""
        return self._append(record, payload_bytes(record))

    def _append(self, item: Record | Span, size: int) -> bool | None:
        queued = self._bytes_in - self._bytes_out + size
        count = len(self._records)
        if count >= self._max_records or queued > self._max_bytes:
            return None
        self._bytes_in += size
        self._records.append((item, size))
        return count >= self._half_records or queued > self.half_bytes

    def put_span(self, span: Span) -> bool | None:
        """Queue a span that has just started (:meth:`put`'s answer)."""
        past_half = self._append(span, span.start_bytes())
        if past_half is not None:
            span.holder = self
        return past_half

    def end_span(self, span: Span) -> bool | None:
        """A span queued here has ended: fold its end into its start if the thread has not
        taken that yet (``False``), else queue the end (:meth:`put`'s answer)."""
        size = span.end_bytes()
        claims = span.claims
        claims.append(_ENDED)
        if claims[0] is _ENDED:
            self._bytes_in += size
            return False
        return self._append(span, size)

    def take(self) -> Record | None:
        """The next record; a span's record(s) are made here, on the thread."""
        record = self._next
        if record is not None:
            self._next = None
            return record
        while self._records:
            item, size = self._records.popleft()  # its size is counted once, by the caller
            self._bytes_out += size
            if type(item) is dict:
                return item
            assert isinstance(item, Span)
            record = self._span_record(item)
            if record is not None:
                return record
        return None

    def _span_record(self, span: Span) -> Record | None:
        claims = span.claims
        if _TAKEN in claims:  # the entry of an end the thread's first take did not see
            return records.span_end(span)
        claims.append(_TAKEN)
        if claims[0] is not _ENDED:
            return records.span_start(span)
        self._bytes_out += span.end_bytes()
        whole = records.span_whole(span)
        if whole is None:
            self._next = records.span_end(span)
            return records.span_start(span)
        return whole

    def take_all(self) -> list[Record]:
        taken = []
        while (record := self.take()) is not None:
            taken.append(record)
        return taken

    def past_half(self) -> bool:
        return (len(self._records) > self._half_records
                or self._bytes_in - self._bytes_out > self.half_bytes)

    def payload_bytes(self) -> int:
        return self._bytes_in - self._bytes_out

    def recount(self) -> None:
        """Once empty, start the byte count over: callers add concurrently, and their ``+=``
        may lose an update."""
        if not self._records:
            self._bytes_out = self._bytes_in


@dataclass(eq=False)
class _FlushRequest:
    done: threading.Event = field(default_factory=threading.Event)
    upto: int | None = None  # the last frame seq it waits for; set by the sender thread
    delivered: bool = False


class Sender:
    """The production sink of a :class:`~agent_shim.tracker.Tracker`."""

    def __init__(self, settings: ShimSettings) -> None:
        self.settings = settings
        self.mode = Mode.OPEN
        self._queue = RecordQueue(settings.queue_size, settings.queue_max_bytes)
        self._drops = DropCounts()
        self._lock = threading.Lock()  # flush requests, starting the thread
        self._requests: list[_FlushRequest] = []
        self._idle = True  # the thread sleeps until woken: a submit must wake it
        self._active_until = 0.0  # the thread looks for records on its own until then
        self._stop_at: float | None = None
        self._thread: threading.Thread | None = None
        self._finished = threading.Event()
        self._delivered_all = True
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        # Owned by the thread (by shutdown's caller once the thread is gone):
        sender_id = os.urandom(8)
        spool = Spool(settings.spool_dir, settings.collector_urls, settings.spool_max_bytes,
                      sender_id.hex())
        self._delivery = Delivery(settings, Framer(settings, self._drops, sender_id),
                                  self._drops, spool)
        self._queue_since: float | None = None

    # --- the caller's side (any thread) ---------------------------------------------------

    def submit(self, record: Record) -> None:
        """Queue a record (the caller's hot path: no lock, no I/O unless past the bounds)."""
        if self.mode is _CLOSING:
            self._drops.count_record(record, "after_shutdown")
        else:
            self._queued(self._queue.put(record), record)

    def span_started(self, span: Span) -> None:
        """Queue a span's start (its record is made on the thread)."""
        if self.mode is _CLOSING:
            self._drops.count({span.scope.run: 1}, "after_shutdown")
        else:
            self._queued(self._queue.put_span(span), span)

    def span_ended(self, span: Span) -> None:
        """A span has ended: its end joins its start, or is queued after it."""
        if span.holder is not self._queue or self.mode is _CLOSING:
            # Its start is not queued here (refused, after shutdown, or queued by the parent of
            # this forked process): the end is a record of its own.
            self.submit(records.span_end(span))
        else:
            self._queued(self._queue.end_span(span), span)

    def _queued(self, past_half: bool | None, item: Record | Span) -> None:
        if past_half is None:
            run = item.scope.run if isinstance(item, Span) else run_of(item)
            self._drops.count({run: 1}, "queue_full")
        elif self.mode is _OPEN and (self._idle or past_half):
            self._wake()

    def flush(self, timeout: float) -> bool:
        """Wait until everything submitted so far is committed; ``False`` on timeout, once an
        event of this process was dropped, or once the thread has failed."""
        if self.mode is Mode.FAILED:
            return False
        if self._thread is None or self._finished.is_set():
            return self._delivered_all and not len(self._queue) and not self._drops.lost_own
        request = _FlushRequest()
        with self._lock:
            self._requests.append(request)
        self._wake()
        return request.done.wait(timeout) and request.delivered and not self._drops.lost_own

    def shutdown(self, timeout: float) -> bool:
        """Deliver what is pending within ``timeout`` seconds, spool the rest; idempotent."""
        if self.mode is Mode.OPEN:
            self.mode = Mode.CLOSING
        if self._thread is None:
            return not self._drops.lost_own
        if self._stop_at is None:
            self._stop_at = time.monotonic() + timeout
            self._wake()
        self._finished.wait(timeout + 1.0)
        if self.mode is Mode.FAILED and self._finished.is_set():
            # What came after the thread died.
            self._delivery.spool_pending(self._queue, self._stop_at)
            return False
        return self._finished.is_set() and self._delivered_all and not self._drops.lost_own

    def forked(self) -> Sender:
        """A fresh sender for a forked child: nothing of the parent's is sent twice."""
        return Sender(self.settings)

    def _wake(self) -> None:
        self._idle = False
        if self._thread is None:
            self._start()
        try:
            os.write(self._wake_w, b"\0")
        except OSError:  # the pipe is full: the thread is already being woken
            pass

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="cmbagent-tracking-sender",
                                                daemon=True)
                self._thread.start()

    # --- the thread -----------------------------------------------------------------------

    def _run(self) -> None:
        transport = None
        try:
            transport = ZmqTransport(self.settings)
            self._delivery.transport = transport
            self._delivery.adopt()
            poller = zmq.Poller()
            for item in (transport.socket, transport.monitor, self._wake_r):
                poller.register(item, zmq.POLLIN)
            while self._stop_at is None:
                ready = dict(poller.poll(self._poll_timeout_ms()))
                self._idle = False
                self._on_ready(ready, transport)
                self._serve_flushes()
                self._pump()
            self._finish(transport, poller)
        except Exception as exc:
            self._fail(exc)
        finally:
            if transport is not None:
                transport.close()
            self._delivery.spool.close()
            self._finished.set()
            with self._lock:
                for request in self._requests:
                    request.done.set()

    def _fail(self, exc: Exception) -> None:
        self.mode = Mode.FAILED
        self._delivered_all = False
        if isinstance(exc, SettingsError):
            log.error("tracking cannot deliver from this process: %s. Its events are kept in the "
                      "spool for a later process; the program goes on", exc)
        else:
            log.exception("the tracking sender failed; its events are kept in the spool for a "
                          "later process; the program goes on")
        self._delivery.spool_pending(self._queue, None)

    def _poll_timeout_ms(self) -> int | None:
        """How long the thread may wait for the socket, a wake or a timer. With nothing queued:
        at most ``flush_interval`` while records came lately, else as long as it likes, marked
        idle so that the next submit wakes it."""
        now = time.monotonic()
        # Only this thread takes records: a queue seen holding some holds them until it pumps.
        if len(self._queue) or self._requests:
            self._active_until = now + LINGER_SECONDS
            return self._timeout_ms(now)
        timeout = self._timeout_ms(now)
        if now < self._active_until:
            interval = int(self.settings.flush_interval * 1000)
            return interval if timeout is None else min(timeout, interval)
        self._idle = True
        # A record queued before ``_idle`` was set did not wake the thread: look again now.
        return 0 if len(self._queue) else timeout

    def _timeout_ms(self, now: float) -> int | None:
        if any(request.upto is None for request in self._requests):
            return 0  # a new flush: drain the queue now
        if len(self._queue):
            if self._queue.past_half():
                return 0
            if self._delivery.window_full():
                return 50  # waiting for acks; wake now and then to spill to the spool
            if self._queue_since is None:
                self._queue_since = now
            if len(self._queue) >= self.settings.batch_max_events:
                return 0
            return max(0, int((self._queue_since + self.settings.flush_interval - now) * 1000))
        resend_in = self._delivery.seconds_to_resend(now)
        if resend_in is None:
            return None
        if resend_in == float("inf"):
            return 1000  # unsent: a new connection wakes us through the monitor
        return max(1, int(resend_in * 1000))

    def _on_ready(self, ready: dict[Any, int], transport: ZmqTransport) -> None:
        if self._wake_r in ready:
            try:
                os.read(self._wake_r, 4096)
            except BlockingIOError:
                pass
        transport.receive(ready, self._delivery)

    def _serve_flushes(self) -> None:
        if not self._requests:
            return
        for request in self._requests:
            if request.upto is None:
                self._pump(drain=True)
                request.upto = self._delivery.framer.seq
        pending = self._delivery.first_pending()
        first_pending = self._delivery.framer.seq + 1 if pending is None else pending
        with self._lock:
            for request in [r for r in self._requests
                            if r.upto is not None and r.upto < first_pending]:
                request.delivered = True
                request.done.set()
                self._requests.remove(request)

    def _pump(self, until: float | None = None, drain: bool = False) -> None:
        """Let delivery send, frame and spill; ``until``: stop cleaning and packing then
        (without one: when exit begins)."""
        if until is None:
            self._delivery.pump(self._queue, lambda: self._stop_at is not None, drain)
        else:
            self._delivery.pump(self._queue, lambda: time.monotonic() >= until, drain)
        if not len(self._queue):
            self._queue_since = None
            self._queue.recount()

    def _finish(self, transport: ZmqTransport, poller: zmq.Poller) -> None:
        """Deliver while the time left allows writing the rest to the spool, then write it."""
        stop_at = self._stop_at or time.monotonic()
        delivery = self._delivery
        while True:
            spool_from = stop_at - self._time_to_spool()
            self._pump(until=spool_from)
            if not (delivery.undelivered() or len(self._queue)) or time.monotonic() >= spool_from:
                break
            packing = len(self._queue) and not delivery.window_full()
            wait_ms = 0 if packing else max(1, min(50, int((spool_from - time.monotonic()) * 1000)))
            self._on_ready(dict(poller.poll(wait_ms)), transport)
        undelivered = delivery.undelivered() + bool(len(self._queue))
        delivery.spool_pending(self._queue, stop_at)
        self._delivered_all = not undelivered
        if undelivered:
            log.warning("tracking events were not all acknowledged in time; the rest wait in %s",
                        delivery.spool.directory)

    def _time_to_spool(self) -> float:
        """A generous estimate of the seconds that writing what is undelivered would take."""
        return (_SPOOL_SECONDS + self._delivery.unsaved_bytes() / _SPOOL_BYTES_PER_SECOND
                + self._queue.payload_bytes() / _CLEAN_BYTES_PER_SECOND)
