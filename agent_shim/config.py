"""The shim's settings, read once from the environment.

A bad value never stops the agent: it is logged and replaced by the default.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)

Number = TypeVar("Number", int, float)

COLLECTOR_URL = "CMBAGENT_COLLECTOR_URL"
"""ZeroMQ endpoint(s) of the collector; unset or empty turns capture off entirely."""
RUN_ID = "CMBAGENT_RUN_ID"
"""Attach this process's events to an existing run (a worker spawned by a workflow)."""
SESSION_ID = "CMBAGENT_SESSION_ID"
"""Attach this process's runs to an existing session."""
SPOOL_DIR = "CMBAGENT_SPOOL_DIR"
"""Where undelivered frames wait on disk (default: the user's state directory)."""
SPOOL_MAX_BYTES = "CMBAGENT_SPOOL_MAX_BYTES"
QUEUE_SIZE = "CMBAGENT_QUEUE_SIZE"
"""The in-memory queue's bound in records (default 100,000)."""
QUEUE_MAX_BYTES = "CMBAGENT_QUEUE_MAX_BYTES"
"""The in-memory queue's bound in payload bytes (default 64 MiB); past half of it (or of the
record bound) while the collector lags, events spill to the spool; past it, they are dropped."""
EXIT_TIMEOUT = "CMBAGENT_EXIT_TIMEOUT"
"""Seconds process exit waits for delivery before spooling the rest (default 2)."""
ACK_TIMEOUT = "CMBAGENT_ACK_TIMEOUT"
MAX_FIELD_CHARS = "CMBAGENT_MAX_FIELD_CHARS"
CURVE_SERVER_KEY = "CMBAGENT_CURVE_SERVER_KEY"
"""The collector's CurveZMQ public key (Z85); with it, the connection is encrypted and
authenticated with this process's key pair from ``CMBAGENT_CURVE_SECRET_KEY_FILE``."""
CURVE_SECRET_KEY_FILE = "CMBAGENT_CURVE_SECRET_KEY_FILE"
REDACT_KEYS = "CMBAGENT_REDACT_KEYS"
"""Extra regular expression: payload keys whose values are replaced by ``[REDACTED]``."""
REDACT_PATTERNS = "CMBAGENT_REDACT_PATTERNS"
"""Extra regular expression: text matching it is replaced by ``[REDACTED]`` wherever it occurs."""


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "cmbagent-tracking"


@dataclass(frozen=True)
class ShimSettings:
    """Everything the shim can be told; ``from_env`` is the only place that reads variables."""

    collector_urls: tuple[str, ...] = ()
    run_id: bytes | None = None
    session_id: bytes | None = None
    spool_dir: Path = field(default_factory=lambda: default_state_dir() / "spool")
    spool_max_bytes: int = 512 * 1024 * 1024
    queue_size: int = 100_000
    queue_max_bytes: int = 64 * 1024 * 1024
    exit_timeout: float = 2.0
    ack_timeout: float = 10.0
    batch_max_events: int = 2_000
    batch_max_bytes: int = 1024 * 1024
    flush_interval: float = 0.005
    window_frames: int = 64
    max_field_chars: int = 32_768
    redact_keys: str | None = None
    redact_patterns: str | None = None
    curve_server_key: str | None = None
    curve_secret_key_file: Path | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.collector_urls)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ShimSettings:
        env = dict(os.environ if env is None else env)
        defaults = cls()
        urls = tuple(u.strip() for u in env.get(COLLECTOR_URL, "").split(",") if u.strip())
        return cls(
            collector_urls=urls,
            run_id=_uuid(env, RUN_ID),
            session_id=_uuid(env, SESSION_ID),
            spool_dir=Path(env[SPOOL_DIR]) if env.get(SPOOL_DIR) else defaults.spool_dir,
            spool_max_bytes=_number(env, SPOOL_MAX_BYTES, int, defaults.spool_max_bytes),
            queue_size=_number(env, QUEUE_SIZE, int, defaults.queue_size),
            queue_max_bytes=_number(env, QUEUE_MAX_BYTES, int, defaults.queue_max_bytes),
            exit_timeout=_number(env, EXIT_TIMEOUT, float, defaults.exit_timeout),
            ack_timeout=_number(env, ACK_TIMEOUT, float, defaults.ack_timeout),
            max_field_chars=_number(env, MAX_FIELD_CHARS, int, defaults.max_field_chars),
            redact_keys=env.get(REDACT_KEYS) or None,
            redact_patterns=env.get(REDACT_PATTERNS) or None,
            curve_server_key=env.get(CURVE_SERVER_KEY) or None,
            curve_secret_key_file=Path(env[CURVE_SECRET_KEY_FILE])
            if env.get(CURVE_SECRET_KEY_FILE) else None,
        )


def _number(env: dict[str, str], name: str, kind: type[Number], default: Number) -> Number:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = kind(-1)
    if value < 0:
        log.warning("%s=%r is not a non-negative %s; using %s", name, raw, kind.__name__, default)
        return default
    return value


def _uuid(env: dict[str, str], name: str) -> bytes | None:
    import uuid

    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        return uuid.UUID(raw).bytes
    except ValueError:
        log.warning("%s=%r is not a UUID; ignoring it", name, raw)
        return None
