"""``cmbagent-collector``: run the daemon, manage the schema."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import logging.config
import sys
import uuid
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
        settings = Settings.from_env(dsn=args.dsn, schema=args.schema, data_dir=args.data_dir,
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
        schema.upgrade(dsn, schema=settings.schema)
    store = Store(dsn, settings.pool_size, settings.schema)

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
    schema.upgrade(dsn, args.revision, settings.schema)
    log.info("database %s is at %s", redact_dsn(dsn), args.revision)
    return 0


def _downgrade(settings: Settings, args: argparse.Namespace) -> int:
    from . import schema

    dsn, _server = database(settings)
    schema.downgrade(dsn, args.revision, settings.schema)
    log.info("database %s downgraded to %s", redact_dsn(dsn), args.revision)
    return 0


def _prune(settings: Settings, args: argparse.Namespace) -> int:
    from . import prune
    from .schema import connect

    if not args.older_than and not args.run:
        raise SystemExit("prune: say what to remove: --older-than AGE and/or --run ID")
    try:
        age = prune.parse_age(args.older_than) if args.older_than else None
    except ValueError as exc:
        raise SystemExit(f"prune: {exc}") from None
    dsn, _server = database(settings)

    async def run() -> None:
        connection = await connect(dsn, settings.schema)
        try:
            runs = await prune.select_runs(connection, older_than=age, run_ids=args.run)
            for candidate in runs:
                print(f"{'would remove' if args.dry_run else 'removing'} run {candidate.run_id} "
                      f"({candidate.status}, started {candidate.started_at}, "
                      f"{candidate.events} events)")
            if not args.dry_run:
                removed = await prune.prune(connection, runs, args.batch_size)
                print(f"removed {len(runs)} runs ({removed} rows)")
            else:
                print(f"dry run: {len(runs)} runs would be removed")
        finally:
            await connection.close()

    asyncio.run(run())
    return 0


def _keys(settings: Settings, args: argparse.Namespace) -> int:
    import zmq.auth

    args.directory.mkdir(parents=True, exist_ok=True)
    public_file, secret_file = zmq.auth.create_certificates(args.directory, args.name)
    Path(secret_file).chmod(0o600)
    public = zmq.auth.load_certificate(public_file)[0].decode()
    print(f"public key file: {public_file}\nsecret key file: {secret_file}\npublic key: {public}")
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
    for name in ("metrics_bind", "curve_secret_key_file", "curve_allow_dir", "max_message_bytes"):
        if getattr(args, name, None):
            overrides[name] = getattr(args, name)
    return overrides


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cmbagent-collector",
        description="Receive cmbagent-tracking events over ZeroMQ and store them in PostgreSQL.")
    parser.add_argument("--dsn", help="PostgreSQL URL (env CMBAGENT_TRACKING_DATABASE_URL); "
                        "default: an embedded server under the data directory")
    parser.add_argument("--schema", help="PostgreSQL schema of the tracking tables "
                        "(env CMBAGENT_TRACKING_SCHEMA; default cmbagent_tracking)")
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
    serve.add_argument("--max-message-bytes", type=int, metavar="N",
                       help="refuse larger messages before reading them (default 32 MiB; "
                       "frames over the protocol's 8 MiB are quarantined)")
    serve.add_argument("--curve-secret-key-file", type=Path, metavar="FILE",
                       help="turn on CurveZMQ with this key pair (env "
                       "CMBAGENT_CURVE_SECRET_KEY_FILE); needs --curve-allow-dir")
    serve.add_argument("--curve-allow-dir", type=Path, metavar="DIR",
                       help="accept only clients whose public key file is in DIR "
                       "(env CMBAGENT_CURVE_ALLOW_DIR)")
    serve.set_defaults(command=_serve)

    prune = commands.add_parser("prune", help="remove runs with their nodes, events and costs")
    prune.add_argument("--older-than", metavar="AGE",
                       help="runs that ended (or, if running, started) more than AGE ago: 30d, 12h")
    prune.add_argument("--run", action="append", type=uuid.UUID, metavar="ID",
                       help="a run to remove, repeatable")
    prune.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")
    prune.add_argument("--batch-size", type=int, default=5000,
                       help="rows deleted per transaction (default 5000)")
    prune.set_defaults(command=_prune)

    keys = commands.add_parser("keys", help="make a CurveZMQ key pair (for the collector or an agent)")
    keys.add_argument("directory", type=Path)
    keys.add_argument("--name", default="collector",
                      help="file name stem: NAME.key (public) and NAME.key_secret")
    keys.set_defaults(command=_keys)

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
