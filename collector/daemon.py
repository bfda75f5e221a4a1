"""The collector daemon: receive frames, batch them, commit, then acknowledge.

- Receiving never awaits per frame: the socket's file descriptor wakes a callback that drains
  every waiting frame without blocking (``recv`` with ``NOBLOCK`` until ``Again``).
- Frames wait in memory until a batch is full (by events) or ``batch_delay`` has passed since the
  first one arrived. Past ``max_pending_bytes`` the daemon stops reading; ZeroMQ's buffers then
  fill and the shims' sends back off, so pressure reaches them instead of our memory. A batch
  decodes at most ``batch_max_events`` records (stored or refused) or ``batch_max_bytes`` of
  frames, plus one frame (see ``docs/operations.md`` for the whole bound).
- While a batch commits, the next one is decoded from the frames waiting or arriving meanwhile,
  so decoding and the database work at the same time: one batch ahead, never more.
- A frame refused whole (malformed, oversize, ...) is answered ``refused`` with its batch id,
  when that can be read, after the commit that quarantines it: its shim stops resending it.
- A batch is committed in one transaction; only then are its frames acknowledged. Batches
  commit one at a time, in the order their frames arrived. If the database is away, the same
  batch is retried with backoff and nothing is acknowledged.
- SIGTERM or SIGINT: stop reading, commit and acknowledge what is held, exit.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections import deque
from typing import Any, cast

import zmq
import zmq.auth

from agent_shim.wire import ACK, REFUSED, encode_reply

from . import schema
from .metrics import Metrics
from .pipeline import QUARANTINE_PAYLOAD_BYTES, Decoded, decode, refused
from .settings import Settings
from .store import Store

log = logging.getLogger(__name__)

RETRY_DELAYS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class Collector:
    """One daemon: a ROUTER socket, a queue of received frames, one writer."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.metrics = Metrics()
        self._head_revision = schema.head_revision()
        self._pending: deque[tuple[bytes, bytes]] = deque()
        self._refused_early: list[Decoded] = []  # messages over the size limit, already refused
        self._pending_bytes = 0
        self._reading = False
        self._stopping = False
        self._context = zmq.Context()
        self._socket: zmq.Socket[bytes] = self._context.socket(zmq.ROUTER)
        self._arrived = asyncio.Event()
        self._authenticator: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, *, handle_signals: bool = True) -> None:
        """Run until :meth:`stop` (or a signal); commits what it holds before returning."""
        self._loop = asyncio.get_running_loop()
        if handle_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(signum, self.stop, signum)
        try:
            self._bind()  # after the health endpoint: once agents can connect, it answers too
            self._resume_reading()
            log.info("collector listening on %s", ", ".join(self.settings.bind))
            await self._write_loop()
        finally:
            self._pause_reading()
            self._socket.close(linger=1000)  # the last acks get a moment to leave
            if self._authenticator is not None:
                self._authenticator.stop()
            self._context.term()
            value = self.metrics.value
            log.info("collector stopped: %d frames received, %d batches committed, "
                     "%d events stored, %d inputs quarantined",
                     value("cmbagent_frames_received_total"),
                     value("cmbagent_batch_frames_count"),
                     value("cmbagent_rows_stored_total", table="execution_events"),
                     sum(s.value for m in self.metrics.quarantined.collect() for s in m.samples
                         if s.name.endswith("_total")))

    async def readiness(self) -> str | None:
        """``None`` when the database answers and its schema is current, else what is wrong."""
        try:
            revision = await asyncio.wait_for(self.store.schema_revision(), 2.0)
        except Exception as exc:
            return f"database unreachable ({type(exc).__name__}: {exc})"
        if revision != self._head_revision:
            return f"schema at revision {revision}, this collector needs {self._head_revision}"
        return None

    def stop(self, signum: int | None = None) -> None:
        """Stop reading; the write loop commits and acknowledges what is held, then returns."""
        if signum is not None:
            log.info("received %s: committing %d held frames, then stopping",
                     signal.Signals(signum).name, len(self._pending))
        self._stopping = True
        self._pause_reading()
        self._arrived.set()

    # --- receiving ------------------------------------------------------------------------

    def _bind(self) -> None:
        sock = self._socket
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a reconnecting shim takes its identity back
        # Frames over max_message_bytes are refused by ZeroMQ before they are read (it drops
        # the connection); those between the protocol's limit and it are quarantined.
        sock.setsockopt(zmq.MAXMSGSIZE, self.settings.max_message_bytes)
        sock.setsockopt(zmq.RCVHWM, 1000)
        if self.settings.curve_secret_key_file is not None:
            self._authenticate(sock)
        for endpoint in self.settings.bind:
            sock.bind(endpoint)

    def _authenticate(self, sock: zmq.Socket[bytes]) -> None:
        """CurveZMQ: encrypted, and only clients whose public key is allow-listed get in."""
        from zmq.auth.thread import ThreadAuthenticator

        settings = self.settings
        assert settings.curve_secret_key_file is not None and settings.curve_allow_dir is not None
        public, secret = zmq.auth.load_certificate(settings.curve_secret_key_file)
        if secret is None:
            raise SystemExit(f"{settings.curve_secret_key_file} holds no secret key: "
                             "use the .key_secret file that `cmbagent-collector keys` made")
        self._authenticator = ThreadAuthenticator(self._context)
        self._authenticator.start()
        self._authenticator.configure_curve(domain="*", location=str(settings.curve_allow_dir))
        sock.curve_server = True
        sock.curve_publickey = public
        sock.curve_secretkey = secret
        log.info("CurveZMQ on: accepting the client keys in %s", settings.curve_allow_dir)

    def _resume_reading(self) -> None:
        if not self._reading and not self._stopping:
            assert self._loop is not None
            self._reading = True
            self._loop.add_reader(self._socket.FD, self._drain)
            self._drain()  # the descriptor is edge-triggered: read what is already waiting

    def _pause_reading(self) -> None:
        if self._reading and self._loop is not None:
            self._reading = False
            self._loop.remove_reader(self._socket.FD)

    def _drain(self) -> None:
        sock = self._socket
        while self._reading and cast(int, sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            try:
                identity = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            frame, size = self._receive_rest()
            self.metrics.received(size)
            self._pending_bytes += len(frame)
            if size > self.settings.max_message_bytes:
                self._refused_early.append(refused(
                    identity, frame, "oversize",
                    f"a multipart message of {size} bytes > {self.settings.max_message_bytes}"))
            else:
                self._pending.append((identity, frame))
            if self._pending_bytes >= self.settings.max_pending_bytes:
                self.metrics.reading_paused.inc()
                log.warning("holding %d bytes: not reading until the database catches up",
                            self._pending_bytes)
                self._pause_reading()
        self._count_pending()
        self._arrived.set()

    def _receive_rest(self) -> tuple[bytes, int]:
        """The message's remaining parts joined, and their total size. ZeroMQ limits each part
        (``MAXMSGSIZE``), so the total is limited here: past ``max_message_bytes`` parts are
        read and thrown away, and only the first part's head is kept, to quarantine."""
        sock, limit = self._socket, self.settings.max_message_bytes
        parts: list[bytes] = []
        size = 0
        while sock.getsockopt(zmq.RCVMORE):
            part = sock.recv()
            size += len(part)
            if size <= limit:
                parts.append(part)
            elif parts:
                parts = [parts[0][:QUARANTINE_PAYLOAD_BYTES]]
        return b"".join(parts), size

    def _count_pending(self) -> None:
        self.metrics.pending_frames.set(len(self._pending))
        self.metrics.pending_bytes.set(self._pending_bytes)

    # --- writing --------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        """Commit batch after batch, in arrival order, each acknowledged after its commit; the
        next batch is decoded while the previous one commits (one batch ahead, no more)."""
        committing: asyncio.Task[None] | None = None
        while True:
            batch = await self._next_batch(committing)
            if committing is not None:
                await committing
                committing = None
                if self._pending_bytes < self.settings.max_pending_bytes // 2:
                    self._resume_reading()
            if batch:
                committing = asyncio.create_task(self._commit(batch))
            elif self._stopping and not self._pending and not self._refused_early:
                return

    async def _next_batch(self, committing: asyncio.Task[None] | None) -> list[Decoded]:
        """Decode frames into the next batch: until it is full, or, while ``committing`` runs,
        until that commit is done; when the writer is idle, ``batch_delay`` after the first
        frame arrives. Returns an empty batch if there is nothing to write."""
        settings = self.settings
        if committing is None:
            if not self._pending and not self._refused_early:
                if self._stopping:
                    return []
                self._arrived.clear()
                await self._arrived.wait()
            if not self._stopping:
                await asyncio.sleep(settings.batch_delay)  # let a batch gather
        batch, self._refused_early = self._refused_early, []
        self._pending_bytes -= sum(len(d.quarantined[0].payload) for d in batch)  # their heads
        records = frame_bytes = 0
        while records < settings.batch_max_events and frame_bytes < settings.batch_max_bytes:
            if self._pending:
                identity, frame = self._pending.popleft()
                self._pending_bytes -= len(frame)
                frame_bytes += len(frame)
                decoded = decode(identity, frame, settings.max_frame_bytes,
                                 settings.max_frame_records)
                self.metrics.decoded(decoded)
                records += decoded.records
                batch.append(decoded)
                if committing is not None:
                    await asyncio.sleep(0)  # the commit's replies are read between frames
            elif committing is not None and not committing.done() and not self._stopping:
                await self._arrival_or(committing)
            else:
                break
        self._count_pending()
        return batch

    async def _arrival_or(self, task: asyncio.Task[None]) -> None:
        """Wait until a frame arrives or ``task`` is done."""
        self._arrived.clear()
        arrival = asyncio.ensure_future(self._arrived.wait())
        try:
            await asyncio.wait((task, arrival), return_when=asyncio.FIRST_COMPLETED)
        finally:
            arrival.cancel()

    async def _commit(self, batch: list[Decoded]) -> None:
        """Write until it succeeds (or we are stopping and out of time), then acknowledge."""
        deadline: float | None = None
        for attempt in range(1_000_000):
            started = time.monotonic()
            try:
                result = await self.store.write(batch)
            except Exception as exc:
                self.metrics.database_errors.labels(type(exc).__name__).inc()
                delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
                log.warning("cannot store a batch of %d frames (%s: %s); retrying in %.1fs",
                            len(batch), type(exc).__name__, exc, delay)
                if self._stopping:
                    deadline = deadline or time.monotonic() + self.settings.shutdown_timeout
                    if time.monotonic() + delay > deadline:
                        log.error("giving up at shutdown: %d frames stay unacknowledged and "
                                  "will be sent again by their shims", len(batch))
                        return
                await asyncio.sleep(delay)
                continue
            elapsed = time.monotonic() - started
            self.metrics.committed(batch, result, elapsed, after_errors=attempt > 0)
            log.debug("committed %d frames in %.1f ms", len(batch), elapsed * 1000)
            self._acknowledge(batch)
            return

    def _acknowledge(self, batch: list[Decoded]) -> None:
        replies: dict[tuple[bytes, str], list[bytes]] = {}
        for decoded in batch:
            if decoded.batch_id is not None:
                replies.setdefault((decoded.identity, ACK), []).append(decoded.batch_id)
            elif decoded.refused_id is not None:
                replies.setdefault((decoded.identity, REFUSED), []).append(decoded.refused_id)
        for (identity, kind), batch_ids in replies.items():
            try:
                self._socket.send_multipart([identity, encode_reply(kind, batch_ids)], zmq.NOBLOCK)
            except zmq.ZMQError:  # the shim is gone; it will resend, and we store it once
                pass
        # A send can consume the descriptor's pending read edge: frames that arrived meanwhile
        # would wait unseen until some later edge. Look at the socket's real state now.
        if self._reading:
            self._drain()
