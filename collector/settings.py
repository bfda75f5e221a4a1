"""The collector's settings: one dataclass, filled from flags and environment variables."""

from __future__ import annotations

import ipaddress
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
HTTP_BIND = "CMBAGENT_HTTP_BIND"
METRICS_BIND = "CMBAGENT_METRICS_BIND"  # the older name of HTTP_BIND, still honoured
HTTP_TOKEN = "CMBAGENT_HTTP_TOKEN"
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
    # Larger messages are refused: single-part ones by ZeroMQ before they are read, multipart
    # ones (the limit is their total) part by part, keeping nothing past the limit.
    max_message_bytes: int = 32 * 1024 * 1024
    max_frame_records: int = 10_000  # frames with more records are refused whole
    batch_max_events: int = 5_000  # records (stored or refused) per committed batch
    batch_max_bytes: int = 16 * 1024 * 1024  # frame bytes decoded per committed batch
    batch_delay: float = 0.005
    max_pending_bytes: int = 256 * 1024 * 1024  # frames held undecoded; then reading stops
    shutdown_timeout: float = 10.0
    pool_size: int = 4
    # HOST:PORT of the web view, its API, /livez, /readyz and /metrics; None: no HTTP at all.
    http_bind: str | None = "127.0.0.1:8790"
    http_token: str | None = None  # required when http_bind is not a loopback address
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
        if self.http_bind is not None and not self.http_bind.rpartition(":")[2].isdigit():
            raise SettingsError(f"HTTP address {self.http_bind!r} is not HOST:PORT (or 'off')")
        if self.dsn is not None and urlsplit(self.dsn).scheme not in ("postgres", "postgresql"):
            raise SettingsError(
                f"database URL {redact_dsn(self.dsn)!r} is not a PostgreSQL URL "
                "(postgresql://user:password@host:port/database)"
            )

    def check_http_exposure(self) -> None:
        """Refuse (:class:`SettingsError`) a web view reachable from other hosts without a token.

        Checked by the commands that serve HTTP, not here: ``migrate`` or ``runs`` in an
        environment made for ``serve`` need no token.
        """
        if self.http_bind is None or self.http_token:
            return
        host = self.http_bind.rpartition(":")[0]
        if not is_loopback(host):
            raise SettingsError(
                f"the web view on {self.http_bind} would be reachable from other hosts: set a "
                f"token ({HTTP_TOKEN} or --http-token), or bind loopback (127.0.0.1:PORT)")

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Defaults, then environment variables, then ``overrides`` (flags given on the command
        line)."""
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
        http_bind = os.environ.get(HTTP_BIND) or os.environ.get(METRICS_BIND)
        if http_bind:
            values["http_bind"] = http_bind
        if os.environ.get(HTTP_TOKEN):
            values["http_token"] = os.environ[HTTP_TOKEN]
        if os.environ.get(SCHEMA):
            values["schema"] = os.environ[SCHEMA]
        for name, variable in (("curve_secret_key_file", CURVE_SECRET_KEY_FILE),
                               ("curve_allow_dir", CURVE_ALLOW_DIR)):
            if os.environ.get(variable):
                values[name] = Path(os.environ[variable])
        if os.environ.get(TRACKING_HOME):
            values["data_dir"] = Path(os.environ[TRACKING_HOME])
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values.get("http_bind") == "off":
            values["http_bind"] = None
        return cls(**values)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        dsn = redact_dsn(self.dsn) if self.dsn else "embedded"
        return (f"Settings(bind={self.bind}, dsn={dsn!r}, schema={self.schema!r}, "
                f"data_dir='{self.data_dir}')")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name, or an address, IPv6 with or without brackets) is this machine."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # another name: it may resolve to anything


def redact_dsn(dsn: str) -> str:
    """The DSN with its password replaced, for logs and errors."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
