"""The ZeroMQ side of delivery: one DEALER socket to the collectors, and its monitor.

ZeroMQ queues nothing for a peer that is not connected and keeps nothing at close: durability
is the sender's (acknowledgements, the spool), never ZeroMQ's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from .config import CURVE_SECRET_KEY_FILE, CURVE_SERVER_KEY, ShimSettings
from .delivery import Delivery
from .wire import decode_reply

_MONITORED = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED


class SettingsError(ValueError):
    """The agent-side settings cannot work; the message says what to fix."""


class ZmqTransport:
    """A connected DEALER socket; its ``socket`` and ``monitor`` are polled by the sender."""

    def __init__(self, settings: ShimSettings) -> None:
        self._context = zmq.Context()
        self.socket: zmq.Socket[bytes] = self._context.socket(zmq.DEALER)
        self.monitor: zmq.Socket[bytes] | None = None
        try:
            self._connect(settings)
        except Exception:
            self.close()
            raise

    def send(self, data: bytes) -> bool:
        """Hand a frame to ZeroMQ; ``False`` if no collector is connected or its pipe is full."""
        try:
            self.socket.send(data, zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def receive(self, ready: dict[Any, int], delivery: Delivery) -> None:
        """Pass what the poll found ready (replies, lost connections) on to ``delivery``."""
        if self.monitor is not None and self.monitor in ready:
            while self.monitor.poll(0):
                if recv_monitor_message(self.monitor)["event"] == zmq.EVENT_DISCONNECTED:
                    delivery.disconnected()
        if self.socket in ready:
            while self.socket.poll(0):
                delivery.replied(*decode_reply(self.socket.recv()))

    def close(self) -> None:
        if self.monitor is not None:
            self.socket.disable_monitor()
            self.monitor.close(linger=0)
        self.socket.close(linger=0)
        self._context.term()

    def _connect(self, settings: ShimSettings) -> None:
        sock = self.socket
        sock.setsockopt(zmq.IMMEDIATE, 1)  # queue nothing for peers that are not connected
        sock.setsockopt(zmq.LINGER, 0)  # durability is ours (acks, spool), never zmq's
        sock.setsockopt(zmq.SNDHWM, settings.window_frames * 2)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
        if settings.curve_server_key:
            _use_curve(sock, settings.curve_server_key, settings.curve_secret_key_file)
        self.monitor = sock.get_monitor_socket(_MONITORED)
        for url in settings.collector_urls:
            sock.connect(url)


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
