"""The sender: one bounded queue, one daemon thread that owns the ZeroMQ socket and the spool.

Callers only append to the queue (and, when the thread sleeps, write one byte to wake it). The
thread cleans and packs records into frames, sends them over a DEALER socket, and keeps every
frame until the collector acknowledges it after its database commit:

- a window of frames in flight; a frame is sent again after ``ack_timeout`` or when the
  connection was lost, and the collector stores each event once, so that is harmless;
- when the window is full and the queue passes half its bound (the collector is slow or away),
  the oldest events are packed into frames on disk (the spool) and sent from there later;
- at exit, it waits up to ``exit_timeout`` for acks, then spools what is still unacknowledged;
- only when the queue is full, or the spool is full, are events dropped; the counts per run
  travel in every frame header to the stored run.
"""

from __future__ import annotations

import logging
import os
import socket as _socket
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from .config import ShimSettings
from .payload import Cleaner
from .spool import Spool
from .wire import ACK, MAX_FRAME_BYTES, decode_reply, encode_frame, pack_record

log = logging.getLogger(__name__)

Record = dict[str, Any]
_MAX_RECORD_BYTES = MAX_FRAME_BYTES // 2
_MONITORED = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED


@dataclass(eq=False)
class _Frame:
    seq: int
    batch_id: bytes
    data: bytes | None
    runs: Counter[Any]
    path: Path | None = None  # on disk: deleted once acknowledged
    sent_at: float = 0.0  # 0: not sent since the last (re)connect
    own: bool = True  # False for frames adopted from a process that is gone


@dataclass(eq=False)
class _FlushRequest:
    done: threading.Event = field(default_factory=threading.Event)
    upto: int | None = None  # the last frame seq it waits for; set by the sender thread


class Sender:
    """The production sink of a :class:`~agent_shim.tracker.Tracker`."""

    def __init__(self, settings: ShimSettings) -> None:
        self.settings = settings
        self._queue: deque[Record] = deque()
        self._id = os.urandom(8)
        self._cleaner = Cleaner(settings.max_field_chars, settings.redact_keys,
                                settings.redact_patterns)
        self._lock = threading.Lock()  # drops, flush requests, starting the thread
        self._drops: Counter[tuple[Any, str]] = Counter()
        self._requests: list[_FlushRequest] = []
        self._idle = True  # the thread sleeps on an empty queue: a submit must wake it
        self._closing = False
        self._stop_at: float | None = None
        self._thread: threading.Thread | None = None
        self._finished = threading.Event()
        self._delivered_all = True
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        # Owned by the thread:
        self._seq = 0
        self._in_flight: dict[bytes, _Frame] = {}
        self._backlog: deque[_Frame] = deque()
        self._adopted: deque[Path] = deque()
        self._queue_since: float | None = None
        self._spool = Spool(settings.spool_dir, settings.spool_max_bytes, self._id.hex())
        self._host = _socket.gethostname()

    # --- the caller's side (any thread) ---------------------------------------------------

    def submit(self, record: Record) -> None:
        if self._closing:
            self._drop(record, "after_shutdown")
            return
        queue = self._queue
        if len(queue) >= self.settings.queue_size:
            self._drop(record, "queue_full")
            return
        queue.append(record)
        if self._idle:
            self._wake()

    def flush(self, timeout: float) -> bool:
        if self._thread is None:
            return not self._queue
        if self._finished.is_set() or not self._thread.is_alive():
            return self._delivered_all and not self._queue
        request = _FlushRequest()
        with self._lock:
            self._requests.append(request)
        self._wake()
        return request.done.wait(timeout)

    def shutdown(self, timeout: float) -> bool:
        """Deliver what is pending within ``timeout`` seconds, spool the rest; idempotent."""
        with self._lock:
            first = not self._closing
            self._closing = True
        if self._thread is None:
            return True
        if first:
            self._stop_at = time.monotonic() + timeout
            self._wake()
        self._finished.wait(timeout + 1.0)
        return self._finished.is_set() and self._delivered_all

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

    def _drop(self, record: Record, reason: str, count: int = 1) -> None:
        run = record.get("run") or (record.get("id") if record.get("k") == "run" else None)
        with self._lock:
            self._drops[(run, reason)] += count

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
        except Exception:
            log.exception("the tracking sender failed; capture stops, the program goes on")
            self._delivered_all = False
        finally:
            self._closing = True
            if monitor is not None:
                sock.disable_monitor()
                monitor.close(linger=0)
            sock.close(linger=0)
            context.term()
            self._spool.close()
            self._finished.set()
            for request in self._requests:
                request.done.set()

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
                if kind == ACK:
                    for batch_id in batch_ids:
                        self._acknowledged(batch_id)

    def _acknowledged(self, batch_id: bytes) -> None:
        frame = self._in_flight.pop(batch_id, None)
        if frame is not None and frame.path is not None:
            self._spool.remove(frame.path)

    def _serve_flushes(self, sock: zmq.Socket[bytes]) -> None:
        if not self._requests:
            return
        for request in self._requests:
            if request.upto is None:
                self._pump(sock, force=True)
                request.upto = self._seq
        pending = [f.seq for f in (*self._in_flight.values(), *self._backlog) if f.own]
        first_pending = min(pending, default=self._seq + 1)
        with self._lock:
            for request in [r for r in self._requests if r.upto < first_pending]:
                request.done.set()
                self._requests.remove(request)

    def _pump(self, sock: zmq.Socket[bytes], force: bool = False) -> None:
        """Send what is due, fill the window, spill to disk what the window cannot take."""
        now = time.monotonic()
        for frame in self._in_flight.values():
            if frame.sent_at == 0.0 or now - frame.sent_at > self.settings.ack_timeout:
                if not self._send(sock, frame, now):
                    break
        while len(self._in_flight) < self.settings.window_frames:
            frame = self._next_frame()
            if frame is None:
                break
            self._in_flight[frame.batch_id] = frame
            self._send(sock, frame, now)
        if not self._queue:
            self._queue_since = None
        spill_at = 0 if force else self.settings.queue_size // 2
        while len(self._queue) > spill_at:
            self._spill(self._pack())

    def _send(self, sock: zmq.Socket[bytes], frame: _Frame, now: float) -> bool:
        try:
            sock.send(frame.data, zmq.NOBLOCK)
        except zmq.Again:  # no collector connected, or its pipe is full
            return False
        frame.sent_at = now
        return True

    def _next_frame(self) -> _Frame | None:
        """The oldest frame waiting: our spooled frames, then the queue, then adopted ones."""
        while self._backlog:
            frame = self._backlog.popleft()
            if self._load(frame):
                return frame
        if self._queue:
            return self._pack()
        while self._adopted:
            path = self._adopted.popleft()
            owner, seq = path.stem.split("-")
            frame = _Frame(int(seq, 16), bytes.fromhex(owner) + bytes.fromhex(seq), None,
                           Counter(), path=path, own=False)
            if self._load(frame):
                return frame
        return None

    def _load(self, frame: _Frame) -> bool:
        try:
            frame.data = frame.path.read_bytes() if frame.path else frame.data
            return True
        except OSError as exc:
            log.warning("spooled frame %s is unreadable and is skipped: %s", frame.path, exc)
            return False

    def _pack(self) -> _Frame:
        """Clean and pack the oldest queued records into one frame (bounded in count and bytes)."""
        queue, settings = self._queue, self.settings
        packed: list[bytes] = []
        runs: Counter[Any] = Counter()
        size = 0
        while queue and len(packed) < settings.batch_max_events and size < settings.batch_max_bytes:
            record = queue.popleft()
            try:
                data = pack_record(self._cleaner.clean_record(record))
            except Exception:
                log.exception("a record could not be packed and is dropped")
                self._drop(record, "unencodable")
                continue
            if len(data) > _MAX_RECORD_BYTES:
                self._drop(record, "oversize")
                continue
            packed.append(data)
            size += len(data)
            runs[record.get("run") or record.get("id")] += 1
        self._seq += 1
        batch_id = self._id + self._seq.to_bytes(8, "big")
        with self._lock:
            drops = [[run, reason, n] for (run, reason), n in self._drops.items() if run]
        header = {"host": self._host, "pid": os.getpid(), "drops": drops}
        return _Frame(self._seq, batch_id, encode_frame(batch_id, header, packed), runs)

    def _spool_final_drop_counts(self) -> None:
        """Drops after the last frame that reached the disk would go unreported: spool the
        cumulative counts in one records-free frame (the collector keeps the greatest)."""
        with self._lock:
            dropped = bool(self._drops)
        if dropped:
            frame = self._pack()  # the queue is empty: a header with the counts, no records
            self._spool.put(frame.seq, frame.data or b"", bounded=False)

    def _spill(self, frame: _Frame) -> bool:
        """Move a frame's bytes to disk; if the spool cannot take it, its events are dropped."""
        if frame.path is None:
            frame.path = self._spool.put(frame.seq, frame.data or b"")
            if frame.path is None:
                for run, count in frame.runs.items():
                    self._drop({"run": run}, "spool_full", count)
                return False
        frame.data = None
        if frame.own and frame.batch_id not in self._in_flight:
            self._backlog.append(frame)
        return True

    def _finish(self, sock: zmq.Socket[bytes], monitor: zmq.Socket[bytes],
                poller: zmq.Poller) -> None:
        """Deliver until shortly before the deadline, then spool whatever is unacknowledged."""
        stop_at = self._stop_at or time.monotonic()
        # Keep a little of the budget for writing the spool.
        wait_until = stop_at - min(0.25, (stop_at - time.monotonic()) / 4)
        self._pump(sock, force=True)
        while self._in_flight and time.monotonic() < wait_until:
            remaining_ms = max(1, int((wait_until - time.monotonic()) * 1000))
            self._on_ready(dict(poller.poll(min(remaining_ms, 50))), sock, monitor)
            self._pump(sock, force=True)
        self._closing = True
        while self._queue:  # records that arrived while we were closing
            self._spill(self._pack())
        undelivered = [*self._in_flight.values(), *self._backlog]
        for frame in self._in_flight.values():
            if frame.own:
                self._spill(frame)
        self._in_flight.clear()
        self._spool_final_drop_counts()
        self._delivered_all = not undelivered
        if undelivered:
            log.warning("%d frames were not acknowledged in time; they wait in %s",
                        len(undelivered), self.settings.spool_dir)


def _use_curve(sock: zmq.Socket[bytes], server_key: str, key_file: Path | None) -> None:
    """Encrypt and authenticate with CurveZMQ; the collector accepts allow-listed keys only."""
    if key_file is None:
        raise ValueError("CMBAGENT_CURVE_SERVER_KEY is set but CMBAGENT_CURVE_SECRET_KEY_FILE is "
                         "not: make a key pair with `cmbagent-collector keys DIR` and point the "
                         "variable at its .key_secret file")
    public, secret = zmq.auth.load_certificate(key_file)
    if secret is None:
        raise ValueError(f"{key_file} holds no secret key: use the .key_secret file")
    sock.curve_serverkey = server_key.encode()
    sock.curve_publickey = public
    sock.curve_secretkey = secret
