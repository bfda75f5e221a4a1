"""The sender: one bounded queue, one daemon thread that owns the ZeroMQ socket and the spool.

Callers only append to the queue (and, when the thread sleeps or the queue passes half its byte
bound, write one byte to wake it). The thread cleans and packs records into frames, sends them
over a DEALER socket, and keeps every frame until the collector acknowledges it after its
database commit. Every record handed over ends in one of three places: the database, the spool
(delivered by a later process), or a drop count that travels in frame headers to its stored run:

- a window of frames in flight; a frame is sent again after ``ack_timeout`` or when the
  connection was lost, and the collector stores each event once, so that is harmless. A frame
  the collector refuses, or ignores through ``_MAX_IGNORED`` resends while it acknowledges
  others, is given up and counted;
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
import math
import os
import socket as _socket
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import zmq
import zmq.auth
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from .config import CURVE_SECRET_KEY_FILE, CURVE_SERVER_KEY, ShimSettings
from .payload import PAYLOAD_FIELDS, Cleaner
from .spool import RESERVE_BYTES, Spool, SpoolFile
from .wire import (
    ACK,
    MAX_FRAME_BYTES,
    REFUSED,
    WireError,
    decode_frame,
    decode_reply,
    encode_frame,
    pack_record,
)

log = logging.getLogger(__name__)

Record = dict[str, Any]
_MAX_RECORD_BYTES = MAX_FRAME_BYTES // 2
_MONITORED = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
#: Resends of one frame, each while the collector acknowledged others, before it is given up.
_MAX_IGNORED = 5
#: At exit, delivering stops in time to clean and write the rest to the spool at these (slow)
#: speeds, plus a fixed margin: queued payloads must be cleaned first, packed frames only written.
_CLEAN_BYTES_PER_SECOND = 10 * 1024 * 1024
_SPOOL_BYTES_PER_SECOND = 40 * 1024 * 1024
_SPOOL_SECONDS = 0.1
#: Records that give a run its shape; small, so exit spools them even after its deadline.
_STRUCTURE = frozenset({"session", "run", "node", "edge"})
_LAST_FRAME_BYTES = RESERVE_BYTES // 2  # the rest of the reserve is for the header's counts


class Mode(enum.Enum):
    """What the sender does with a record handed to it."""

    OPEN = "open"  # queue it for delivery
    CLOSING = "closing"  # count it as dropped (``after_shutdown``): shutdown has begun
    FAILED = "failed"  # the thread died: keep it within the bounds, spool it at exit


class SettingsError(ValueError):
    """The agent-side settings cannot work; the message says what to fix."""


@dataclass(eq=False)
class _Frame:
    seq: int
    batch_id: bytes
    data: bytes | None
    runs: Counter[Any]  # events per run, to count them if the frame is given up
    path: Path | None = None  # on disk: deleted once acknowledged
    sent_at: float = 0.0  # 0: not sent since the last (re)connect
    own: bool = True  # False for files adopted from a process that is gone
    acks_at_send: int = 0  # acknowledgements received when it was last sent
    ignored: int = 0  # resends while the collector acknowledged other frames


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
        self._queue: deque[Record] = deque()
        # Payload bytes queued = in - out. Each is written by one side only, so no lock is
        # needed; ``out`` is re-synchronised whenever the queue is empty.
        self._bytes_in = 0
        self._bytes_out = 0
        self._spill_bytes = settings.queue_max_bytes // 2
        self._id = os.urandom(8)
        self._cleaner = Cleaner(settings.max_field_chars, settings.redact_keys,
                                settings.redact_patterns)
        self._lock = threading.Lock()  # drops, flush requests, starting the thread
        self._drops: Counter[tuple[Any, str]] = Counter()
        self._lost_own = False  # an event of this process was dropped: no flush can say True
        self._requests: list[_FlushRequest] = []
        self._idle = True  # the thread sleeps on an empty queue: a submit must wake it
        self._stop_at: float | None = None
        self._thread: threading.Thread | None = None
        self._finished = threading.Event()
        self._delivered_all = True
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        # Owned by the thread (by shutdown's caller once the thread is gone):
        self._seq = 0
        self._acks = 0
        self._in_flight: dict[bytes, _Frame] = {}
        self._backlog: deque[_Frame] = deque()
        self._adopted: deque[SpoolFile] = deque()
        self._queue_since: float | None = None
        self._spool = Spool(settings.spool_dir, settings.collector_urls, settings.spool_max_bytes,
                            self._id.hex())
        self._host = _socket.gethostname()

    # --- the caller's side (any thread) ---------------------------------------------------

    def submit(self, record: Record) -> None:
        """Queue a record (the caller's hot path: no lock, no I/O unless past the bounds)."""
        mode = self.mode
        if mode is Mode.CLOSING:
            self._drop(record, "after_shutdown")
            return
        size = _payload_bytes(record)
        queued = self._bytes_in - self._bytes_out
        if (len(self._queue) >= self.settings.queue_size
                or queued + size > self.settings.queue_max_bytes):
            self._drop(record, "queue_full")
            return
        self._bytes_in += size
        self._queue.append(record)
        if mode is Mode.OPEN and (self._idle or queued > self._spill_bytes):
            self._wake()

    def flush(self, timeout: float) -> bool:
        """Wait until everything submitted so far is committed; ``False`` on timeout, once an
        event of this process was dropped, or once the thread has failed."""
        if self.mode is Mode.FAILED:
            return False
        if self._thread is None or self._finished.is_set():
            return self._delivered_all and not self._queue and not self._lost_own
        request = _FlushRequest()
        with self._lock:
            self._requests.append(request)
        self._wake()
        return request.done.wait(timeout) and request.delivered and not self._lost_own

    def shutdown(self, timeout: float) -> bool:
        """Deliver what is pending within ``timeout`` seconds, spool the rest; idempotent."""
        if self.mode is Mode.OPEN:
            self.mode = Mode.CLOSING
        if self._thread is None:
            return not self._lost_own
        if self._stop_at is None:
            self._stop_at = time.monotonic() + timeout
            self._wake()
        self._finished.wait(timeout + 1.0)
        if self.mode is Mode.FAILED and self._finished.is_set():
            self._spool_pending(self._stop_at)  # what came after the thread died
            return False
        return self._finished.is_set() and self._delivered_all and not self._lost_own

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

    def _drop(self, record: Record, reason: str, own: bool = True) -> None:
        self._drop_runs({_run_of(record): 1}, reason, own)

    def _drop_runs(self, runs: dict[Any, int], reason: str, own: bool = True) -> None:
        with self._lock:
            for run, count in runs.items():
                self._drops[(run, reason)] += count
            self._lost_own = self._lost_own or own

    # --- the thread -----------------------------------------------------------------------

    def _run(self) -> None:
        context = zmq.Context()
        sock = context.socket(zmq.DEALER)
        monitor = None
        try:
            monitor = self._connect(sock)
            self._adopted = self._spool.adopt()
            poller = zmq.Poller()
            for item in (sock, monitor, self._wake_r):
                poller.register(item, zmq.POLLIN)
            while self._stop_at is None:
                self._idle = not self._queue
                ready = dict(poller.poll(self._poll_timeout_ms()))
                self._on_ready(ready, sock, monitor)
                self._serve_flushes(sock)
                self._pump(sock)
            self._finish(sock, monitor, poller)
        except Exception as exc:
            self._fail(exc)
        finally:
            if monitor is not None:
                sock.disable_monitor()
                monitor.close(linger=0)
            sock.close(linger=0)
            context.term()
            self._spool.close()
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
        self._spool_pending(None)

    def _connect(self, sock: zmq.Socket[bytes]) -> zmq.Socket[bytes]:
        window = self.settings.window_frames
        sock.setsockopt(zmq.IMMEDIATE, 1)  # queue nothing for peers that are not connected
        sock.setsockopt(zmq.LINGER, 0)  # durability is ours (acks, spool), never zmq's
        sock.setsockopt(zmq.SNDHWM, window * 2)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
        if self.settings.curve_server_key:
            _use_curve(sock, self.settings.curve_server_key, self.settings.curve_secret_key_file)
        monitor = sock.get_monitor_socket(_MONITORED)
        for url in self.settings.collector_urls:
            sock.connect(url)
        return monitor

    def _poll_timeout_ms(self) -> int | None:
        now = time.monotonic()
        if any(request.upto is None for request in self._requests):
            return 0  # a new flush: drain the queue now
        if self._queue:
            if self._over_spill_mark():
                return 0
            if len(self._in_flight) >= self.settings.window_frames:
                return 50  # waiting for acks; wake now and then to spill to the spool
            if self._queue_since is None:
                self._queue_since = now
            if len(self._queue) >= self.settings.batch_max_events:
                return 0
            return max(0, int((self._queue_since + self.settings.flush_interval - now) * 1000))
        if self._in_flight:
            oldest = min(f.sent_at for f in self._in_flight.values())
            if oldest == 0.0:
                return 1000  # unsent: a new connection wakes us through the monitor
            return max(1, int((oldest + self.settings.ack_timeout - now) * 1000))
        return None

    def _on_ready(self, ready: dict[Any, int], sock: zmq.Socket[bytes],
                  monitor: zmq.Socket[bytes]) -> None:
        if self._wake_r in ready:
            try:
                os.read(self._wake_r, 4096)
            except BlockingIOError:
                pass
        if monitor in ready:
            while monitor.poll(0):
                event = recv_monitor_message(monitor)["event"]
                if event == zmq.EVENT_DISCONNECTED:  # what it held may be lost: send again
                    for frame in self._in_flight.values():
                        frame.sent_at = 0.0
        if sock in ready:
            while sock.poll(0):
                kind, batch_ids = decode_reply(sock.recv())
                for batch_id in batch_ids:
                    if kind == ACK:
                        self._acknowledged(batch_id)
                    elif kind == REFUSED and batch_id in self._in_flight:
                        self._give_up(self._in_flight[batch_id], "refused")

    def _acknowledged(self, batch_id: bytes) -> None:
        self._acks += 1
        frame = self._in_flight.pop(batch_id, None)
        if frame is not None and frame.path is not None:
            self._spool.remove(frame.path)

    def _give_up(self, frame: _Frame, reason: str) -> None:
        """Stop sending a frame the collector will not store; its events are counted."""
        del self._in_flight[frame.batch_id]
        runs = frame.runs or Counter(_run_of(r) for r in _readable_records(frame.data or b""))
        log.warning("a frame of %d events is given up (%s)%s", sum(runs.values()), reason,
                    f"; removed {frame.path}" if frame.path else "")
        self._drop_runs(runs, reason, frame.own)
        if frame.path is not None:
            self._spool.remove(frame.path)

    def _serve_flushes(self, sock: zmq.Socket[bytes]) -> None:
        if not self._requests:
            return
        for request in self._requests:
            if request.upto is None:
                self._pump(sock, drain=True)
                request.upto = self._seq
        pending = [f.seq for f in (*self._in_flight.values(), *self._backlog) if f.own]
        first_pending = min(pending, default=self._seq + 1)
        with self._lock:
            for request in [r for r in self._requests
                            if r.upto is not None and r.upto < first_pending]:
                request.delivered = True
                request.done.set()
                self._requests.remove(request)

    def _pump(self, sock: zmq.Socket[bytes], until: float | None = None,
              drain: bool = False) -> None:
        """Send what is due, fill the window, spill to disk what the window cannot take.

        ``until``: stop cleaning and packing then (without one: when exit begins); ``drain``:
        spill the whole queue past the window, not only what passes half the bounds.
        """
        now = time.monotonic()
        for frame in list(self._in_flight.values()):
            if frame.sent_at == 0.0 or now - frame.sent_at > self.settings.ack_timeout:
                if frame.sent_at and self._acks > frame.acks_at_send:
                    frame.ignored += 1
                    if frame.ignored >= _MAX_IGNORED:
                        self._give_up(frame, "unacknowledged")
                        continue
                if not self._send(sock, frame, now):
                    break
        while len(self._in_flight) < self.settings.window_frames and not self._must_stop(until):
            waiting = self._next_frame(until)
            if waiting is None:
                break
            self._in_flight[waiting.batch_id] = waiting
            self._send(sock, waiting, now)
        if not self._queue:
            self._queue_since = None
            self._bytes_out = self._bytes_in
        while (drain and self._queue or self._over_spill_mark()) and not self._must_stop(until):
            packed = self._pack(until)
            if packed is not None:
                self._spill(packed)

    def _must_stop(self, until: float | None) -> bool:
        """Time to stop cleaning and packing: ``until`` passed, or (without one) exit began."""
        return self._stop_at is not None if until is None else time.monotonic() >= until

    def _over_spill_mark(self) -> bool:
        return (len(self._queue) > self.settings.queue_size // 2
                or self._bytes_in - self._bytes_out > self._spill_bytes)

    def _send(self, sock: zmq.Socket[bytes], frame: _Frame, now: float) -> bool:
        try:
            sock.send(frame.data or b"", zmq.NOBLOCK)
        except zmq.Again:  # no collector connected, or its pipe is full
            return False
        frame.sent_at = now
        frame.acks_at_send = self._acks
        return True

    def _next_frame(self, until: float | None) -> _Frame | None:
        """The oldest frame waiting: our spooled frames, then the queue, then adopted files."""
        while self._backlog:
            frame = self._backlog.popleft()
            if self._load(frame):
                return frame
        if self._queue:
            return self._pack(until)
        while self._adopted:
            adopted = self._adopt(self._adopted.popleft())
            if adopted is not None:
                return adopted
        return None

    def _load(self, frame: _Frame) -> bool:
        try:
            frame.data = frame.path.read_bytes() if frame.path else frame.data
            return True
        except OSError as exc:
            log.warning("spooled frame %s is unreadable; its events are counted as dropped: %s",
                        frame.path, exc)
            self._drop_runs(frame.runs, "spool_damaged")
            return False

    def _adopt(self, file: SpoolFile) -> _Frame | None:
        """An adopted file as a frame to send; a damaged frame is removed and counted."""
        try:
            data = file.path.read_bytes()
        except OSError as exc:
            log.warning("spooled file %s is unreadable and is skipped: %s", file.path, exc)
            return None
        try:
            decode_frame(data)
        except WireError as exc:
            runs = Counter(_run_of(r) for r in _readable_records(data))
            log.warning("spooled frame %s is damaged (%s): removed; %d of its events could be "
                        "read and are counted as dropped", file.path, exc, sum(runs.values()))
            self._drop_runs(runs, "spool_damaged", own=False)
            self._spool.remove(file.path)
            return None
        return _Frame(0, file.batch_id, data, Counter(), path=file.path, own=False)

    def _pack(self, until: float | None = None) -> _Frame | None:
        """Clean and pack the oldest queued records into one frame (bounded in count and bytes);
        ``None`` if none was packed (time to stop, or none could be encoded)."""
        queue, settings = self._queue, self.settings
        packed: list[bytes] = []
        runs: Counter[Any] = Counter()
        size = 0
        while queue and len(packed) < settings.batch_max_events and size < settings.batch_max_bytes:
            if self._must_stop(until):
                break
            record = queue.popleft()
            self._bytes_out += _payload_bytes(record)
            data = self._encode(record, own=True)
            if data is not None:
                packed.append(data)
                size += len(data)
                runs[_run_of(record)] += 1
        return self._new_frame(packed, runs) if packed else None

    def _encode(self, record: Record, own: bool) -> bytes | None:
        """A record cleaned (redacted, truncated) and packed; ``None`` (counted) if it cannot be."""
        try:
            data = pack_record(self._cleaner.clean_record(record))
        except Exception:
            log.exception("a record could not be packed and is dropped")
            self._drop(record, "unencodable", own)
            return None
        if len(data) > _MAX_RECORD_BYTES:
            self._drop(record, "oversize", own)
            return None
        return data

    def _new_frame(self, packed: list[bytes], runs: Counter[Any],
                   batch_id: bytes | None = None) -> _Frame:
        if batch_id is None:
            self._seq += 1
            batch_id = self._id + self._seq.to_bytes(8, "big")
        with self._lock:
            drops = [[run, reason, n] for (run, reason), n in self._drops.items() if run]
        header = {"host": self._host, "pid": os.getpid(), "drops": drops}
        return _Frame(int.from_bytes(batch_id[8:], "big"), batch_id,
                      encode_frame(batch_id, header, packed), runs)

    def _spill(self, frame: _Frame) -> None:
        """Move a frame's bytes to disk; if the spool cannot take it, its events are dropped."""
        if frame.path is None:
            frame.path = self._spool.put(frame.seq, frame.data or b"")
            if frame.path is None:
                self._drop_runs(frame.runs, "spool_full", frame.own)
                return
        frame.data = None
        if frame.own and frame.batch_id not in self._in_flight:
            self._backlog.append(frame)

    def _finish(self, sock: zmq.Socket[bytes], monitor: zmq.Socket[bytes],
                poller: zmq.Poller) -> None:
        """Deliver while the time left allows writing the rest to the spool, then write it."""
        stop_at = self._stop_at or time.monotonic()
        window = self.settings.window_frames
        while True:
            spool_from = stop_at - self._time_to_spool()
            self._pump(sock, until=spool_from)
            if not (self._in_flight or self._queue or self._backlog) or _past(spool_from):
                break
            packing = self._queue and len(self._in_flight) < window
            wait_ms = 0 if packing else max(1, min(50, int((spool_from - time.monotonic()) * 1000)))
            self._on_ready(dict(poller.poll(wait_ms)), sock, monitor)
        undelivered = len(self._in_flight) + len(self._backlog) + bool(self._queue)
        self._spool_pending(stop_at)
        self._delivered_all = not undelivered
        if undelivered:
            log.warning("tracking events were not all acknowledged in time; the rest wait in %s",
                        self._spool.directory)

    def _time_to_spool(self) -> float:
        """A generous estimate of the seconds that writing what is undelivered would take."""
        unsaved = sum(len(f.data or b"") for f in self._in_flight.values() if f.path is None)
        queued = self._bytes_in - self._bytes_out
        return (_SPOOL_SECONDS + unsaved / _SPOOL_BYTES_PER_SECOND
                + queued / _CLEAN_BYTES_PER_SECOND)

    def _spool_pending(self, deadline: float | None) -> None:
        """Clean and write what is undelivered to the spool; what the deadline or the disk does
        not allow is counted."""
        for frame in list(self._in_flight.values()):
            if frame.own and frame.path is None:
                if _past(deadline):
                    self._drop_runs(frame.runs, "exit_timeout")
                else:
                    self._spill(frame)
        self._in_flight.clear()
        while self._queue and not _past(deadline):
            packed = self._pack(math.inf if deadline is None else deadline)
            if packed is not None:
                self._spill(packed)
        late = list(self._queue)
        self._queue.clear()
        self._spool_last(late)

    def _spool_last(self, late: list[Record]) -> None:
        """The last frame, in the room the spool reserves for it: every drop count, and the ends
        of runs and nodes that exit had no time for, so that they do not stay ``running``."""
        closing: list[bytes] = []
        room = _LAST_FRAME_BYTES
        for record in late:
            data = self._encode(record, own=True) if record.get("k") in _STRUCTURE else b""
            if data and len(data) <= room:
                closing.append(data)
                room -= len(data)
            elif data is not None:  # None: _encode has counted it
                self._drop(record, "exit_timeout")
        with self._lock:
            dropped = any(run for run, _ in self._drops)
        if dropped or closing:
            frame = self._new_frame(closing, Counter())
            self._spool.put_last(frame.seq, frame.data or b"")


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def _run_of(record: Record) -> Any:
    # ``run`` in a version 1 frame (a spool written before version 2).
    return (record.get("run_id") or record.get("run")
            or (record.get("id") if record.get("k") == "run" else None))


def _payload_bytes(record: Record) -> int:
    """What a queued record holds beyond its fixed fields: its snapshotted payloads."""
    size = 0
    for name in PAYLOAD_FIELDS:
        payload = record.get(name)
        if payload is not None:
            size += len(payload)
    return size


def _readable_records(data: bytes) -> list[Any]:
    """The records that can be read from a frame, up to any damage."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False,
                                max_buffer_size=max(len(data), 1024))
    unpacker.feed(data)
    records: list[Any] = []
    try:
        if unpacker.read_array_header() != 4:
            return records
        for _ in range(3):  # version, batch id, header
            unpacker.skip()
        for _ in range(unpacker.read_array_header()):
            record = unpacker.unpack()
            if isinstance(record, dict):
                records.append(record)
    except Exception:  # damaged from here on: msgpack raises several unrelated types
        pass
    return records


def _use_curve(sock: zmq.Socket[bytes], server_key: str, key_file: Path | None) -> None:
    """Encrypt and authenticate with CurveZMQ; the collector accepts allow-listed keys only."""
    how = "make a key pair with `cmbagent-collector keys DIR` and point it at the .key_secret file"
    if key_file is None:
        raise SettingsError(f"{CURVE_SERVER_KEY} is set but {CURVE_SECRET_KEY_FILE} is not: {how}")
    try:
        public, secret = zmq.auth.load_certificate(key_file)
    except (OSError, ValueError) as exc:
        raise SettingsError(f"{CURVE_SECRET_KEY_FILE}={key_file} cannot be read as a key pair "
                            f"({exc}): {how}") from None
    if secret is None:
        raise SettingsError(f"{CURVE_SECRET_KEY_FILE}={key_file} holds a public key only: use the "
                            f".key_secret file of the pair, not the .key file")
    try:
        if len(z85.decode(server_key.encode())) != 32:
            raise ValueError("not 32 bytes")
    except ValueError:
        raise SettingsError(f"{CURVE_SERVER_KEY} is not a Z85 public key (40 characters): copy "
                            f"it from the collector's server.key file") from None
    sock.curve_serverkey = server_key.encode()
    sock.curve_publickey = public
    sock.curve_secretkey = secret
