"""The collector's settings: one dataclass, filled from flags and environment variables."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

BIND = "CMBAGENT_COLLECTOR_BIND"
DATABASE_URL = "CMBAGENT_TRACKING_DATABASE_URL"
#: The collector's old DSN variable: still read, with a warning, because CMBAgent's own database
#: layer reads it too and would then write its tables into our database.
LEGACY_DATABASE_URL = "CMBAGENT_DATABASE_URL"
SCHEMA = "CMBAGENT_TRACKING_SCHEMA"
DEFAULT_SCHEMA = "cmbagent_tracking"
TRACKING_HOME = "CMBAGENT_TRACKING_HOME"
METRICS_BIND = "CMBAGENT_METRICS_BIND"
CURVE_SECRET_KEY_FILE = "CMBAGENT_CURVE_SECRET_KEY_FILE"
CURVE_ALLOW_DIR = "CMBAGENT_CURVE_ALLOW_DIR"


log = logging.getLogger("collector")

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "cmbagent-tracking"


class SettingsError(ValueError):
    """A setting is unusable; the message says which and what to do."""


@dataclass(frozen=True)
class Settings:
    """Everything ``cmbagent-collector serve`` can be told."""

    bind: tuple[str, ...] = ("tcp://127.0.0.1:5555",)
    dsn: str | None = None
    schema: str = DEFAULT_SCHEMA  # the PostgreSQL schema that holds every table of ours
    data_dir: Path = field(default_factory=default_data_dir)
    migrate: bool = True
    max_frame_bytes: int = 8 * 1024 * 1024  # larger frames are quarantined (reason "oversize")
    max_message_bytes: int = 32 * 1024 * 1024  # larger ones are refused before they are read
    batch_max_events: int = 5_000
    batch_delay: float = 0.005
    max_pending_bytes: int = 256 * 1024 * 1024
    shutdown_timeout: float = 10.0
    pool_size: int = 4
    metrics_bind: str | None = None  # HOST:PORT of /livez, /readyz, /metrics; off when unset
    curve_secret_key_file: Path | None = None  # CurveZMQ on: this collector's key pair
    curve_allow_dir: Path | None = None  # the public keys of the clients it accepts

    def __post_init__(self) -> None:
        for endpoint in self.bind:
            if not endpoint.startswith(("tcp://", "ipc://", "inproc://")):
                raise SettingsError(
                    f"bind endpoint {endpoint!r} is not a ZeroMQ endpoint; "
                    "use tcp://HOST:PORT or ipc:///path"
                )
        if not _SCHEMA_NAME.fullmatch(self.schema):
            raise SettingsError(
                f"schema {self.schema!r} is not a plain PostgreSQL name; use lower-case letters, "
                "digits and underscores, not starting with a digit (default cmbagent_tracking)")
        if self.max_message_bytes < self.max_frame_bytes:
            raise SettingsError(f"--max-message-bytes ({self.max_message_bytes}) must be at least "
                                f"the protocol's frame limit ({self.max_frame_bytes})")
        if (self.curve_secret_key_file is None) != (self.curve_allow_dir is None):
            raise SettingsError(
                "CurveZMQ needs both the collector's key file (--curve-secret-key-file) and a "
                "directory of allowed client keys (--curve-allow-dir); "
                "make keys with `cmbagent-collector keys DIR`")
        if self.metrics_bind is not None and not self.metrics_bind.rpartition(":")[2].isdigit():
            raise SettingsError(f"metrics endpoint {self.metrics_bind!r} is not HOST:PORT")
        if self.dsn is not None and urlsplit(self.dsn).scheme not in ("postgres", "postgresql"):
            raise SettingsError(
                f"database URL {redact_dsn(self.dsn)!r} is not a PostgreSQL URL "
                "(postgresql://user:password@host:port/database)"
            )

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Defaults, then environment variables, then ``overrides`` (flags given on the command line)."""
        values: dict[str, object] = {}
        if os.environ.get(BIND):
            values["bind"] = tuple(e.strip() for e in os.environ[BIND].split(",") if e.strip())
        if os.environ.get(DATABASE_URL):
            values["dsn"] = os.environ[DATABASE_URL]
        elif os.environ.get(LEGACY_DATABASE_URL):
            log.warning("%s is CMBAgent's own database variable; set %s for the collector "
                        "instead (the old name is still read, for now)",
                        LEGACY_DATABASE_URL, DATABASE_URL)
            values["dsn"] = os.environ[LEGACY_DATABASE_URL]
        if os.environ.get(SCHEMA):
            values["schema"] = os.environ[SCHEMA]
        if os.environ.get(METRICS_BIND):
            values["metrics_bind"] = os.environ[METRICS_BIND]
        for name, variable in (("curve_secret_key_file", CURVE_SECRET_KEY_FILE),
                               ("curve_allow_dir", CURVE_ALLOW_DIR)):
            if os.environ.get(variable):
                values[name] = Path(os.environ[variable])
        if os.environ.get(TRACKING_HOME):
            values["data_dir"] = Path(os.environ[TRACKING_HOME])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        dsn = redact_dsn(self.dsn) if self.dsn else "embedded"
        return (f"Settings(bind={self.bind}, dsn={dsn!r}, schema={self.schema!r}, "
                f"data_dir='{self.data_dir}')")


def redact_dsn(dsn: str) -> str:
    """The DSN with its password replaced, for logs and errors."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
