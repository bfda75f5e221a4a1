"""``cmbagent-collector``: run the daemon, manage the schema."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import logging.config
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .settings import Settings, SettingsError, redact_dsn

log = logging.getLogger("collector")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.config.dictConfig(_log_config(args.verbose, args.log_json))
    try:
        settings = Settings.from_env(dsn=args.dsn, data_dir=args.data_dir,
                                     **_command_overrides(args))
    except SettingsError as exc:
        parser.error(str(exc))
    return int(args.command(settings, args) or 0)


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from . import schema
    from .daemon import Collector
    from .store import Store

    dsn, _server = database(settings)
    if settings.migrate:
        schema.upgrade(dsn)
    store = Store(dsn, settings.pool_size)

    async def run() -> None:
        await _open_with_retries(store, dsn)
        try:
            await Collector(settings, store).serve()
        finally:
            await store.close()

    _run_async(run())
    return 0


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from . import schema

    dsn, _server = database(settings)
    schema.upgrade(dsn, args.revision)
    log.info("database %s is at %s", redact_dsn(dsn), args.revision)
    return 0


def _downgrade(settings: Settings, args: argparse.Namespace) -> int:
    from . import schema

    dsn, _server = database(settings)
    schema.downgrade(dsn, args.revision)
    log.info("database %s downgraded to %s", redact_dsn(dsn), args.revision)
    return 0


def database(settings: Settings) -> tuple[str, Any]:
    """The configured DSN, or the embedded server's (started on demand) and its handle."""
    if settings.dsn:
        return settings.dsn, None
    from .embedded import start_embedded

    return start_embedded(settings.data_dir)


async def _open_with_retries(store: Any, dsn: str, attempts: int = 10) -> None:
    for attempt in range(1, attempts + 1):
        try:
            await store.open()
            return
        except (OSError, asyncio.TimeoutError) as exc:
            if attempt == attempts:
                raise SystemExit(f"cannot connect to {redact_dsn(dsn)}: {exc}") from None
            log.warning("cannot connect to %s (%s); %d retries remaining", redact_dsn(dsn), exc,
                        attempts - attempt)
            await asyncio.sleep(min(2.0, 0.2 * attempt))


def _run_async(coroutine: Any) -> None:
    try:
        import uvloop
    except ImportError:  # Windows: plain asyncio
        asyncio.run(coroutine)
    else:
        uvloop.run(coroutine)


def _command_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if getattr(args, "bind", None):
        overrides["bind"] = tuple(args.bind)
    if getattr(args, "no_migrate", False):
        overrides["migrate"] = False
    if getattr(args, "metrics_bind", None):
        overrides["metrics_bind"] = args.metrics_bind
    return overrides


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cmbagent-collector",
        description="Receive cmbagent-tracking events over ZeroMQ and store them in PostgreSQL.")
    parser.add_argument("--dsn", help="PostgreSQL URL (env CMBAGENT_DATABASE_URL); "
                        "default: an embedded server under the data directory")
    parser.add_argument("--data-dir", type=Path,
                        help="state directory (env CMBAGENT_TRACKING_HOME); "
                        "default ~/.local/share/cmbagent-tracking")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the collector daemon")
    serve.add_argument("--bind", action="append",
                       help="ZeroMQ endpoint to listen on, repeatable (env CMBAGENT_COLLECTOR_BIND; "
                       "default tcp://127.0.0.1:5555)")
    serve.add_argument("--no-migrate", action="store_true",
                       help="do not apply migrations at start")
    serve.add_argument("--metrics-bind", metavar="HOST:PORT",
                       help="serve /livez, /readyz and /metrics over HTTP here "
                       "(env CMBAGENT_METRICS_BIND; default: off)")
    serve.set_defaults(command=_serve)

    migrate = commands.add_parser("migrate", help="apply the schema migrations")
    migrate.add_argument("revision", nargs="?", default="head")
    migrate.set_defaults(command=_migrate)

    downgrade = commands.add_parser("downgrade", help="revert schema migrations")
    downgrade.add_argument("revision", nargs="?", default="base")
    downgrade.set_defaults(command=_downgrade)

    from .queries import add_commands

    add_commands(commands)
    return parser


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname,
                 "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _log_config(verbose: bool, as_json: bool) -> dict[str, Any]:
    warnings.simplefilter("ignore", category=ResourceWarning)
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "text": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
            "json": {"()": _JsonFormatter},
        },
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": sys.stderr,
                                "formatter": "json" if as_json else "text"}},
        "root": {"handlers": ["stderr"], "level": "WARNING"},
        "loggers": {"collector": {"level": "DEBUG" if verbose else "INFO"},
                    "alembic": {"level": "WARNING"}},
    }


if __name__ == "__main__":
    sys.exit(main())
