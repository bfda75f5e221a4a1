"""``cmbagent-collector``: its arguments, its logging, and what each command does with them.

The read commands fetch through ``reads`` (JSON-ready data, as the web API serves it) and print
that data as JSON or as ``render``'s text.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import logging.config
import sys
import uuid
import warnings
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg

from . import reads, render
from .options import database, execution_order, positive, run_id
from .settings import Settings, SettingsError, redact_dsn

log = logging.getLogger("collector")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.config.dictConfig(_log_config(args.verbose, args.log_json,
                                          quiet=getattr(args, "quiet", False)))
    try:
        settings = Settings.from_env(dsn=args.dsn, schema=args.schema, data_dir=args.data_dir,
                                     **_command_overrides(args))
    except SettingsError as exc:
        parser.error(str(exc))
    return int(args.command(settings, args) or 0)


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from . import schema
    from .daemon import Collector
    from .otlp.commands import following
    from .otlp.ingest import OtlpIngest
    from .store import Store

    _check_http_exposure(settings)
    dsn, _server = database(settings)
    _run_async(_with_retries(lambda: _probe(dsn), dsn))
    if settings.migrate:
        schema.upgrade(dsn, schema=settings.schema)
    store = Store(dsn, settings.pool_size, settings.schema)

    async def run() -> None:
        await _with_retries(store.open, dsn)
        _tune_gc()
        try:
            collector = Collector(settings, store)
            ingest = OtlpIngest(store, collector.metrics)
            async with _http(settings, dsn, readiness=collector.readiness,
                             metrics=collector.metrics, routes=ingest.add_routes), \
                    following(args, dsn, settings.schema, collector.metrics):
                await collector.serve()
        finally:
            await store.close()

    _run_async(run())
    return 0


#: Container objects allocated (net) between two young-generation collections; Python's default
#: is 700, which a batch of thousands of decoded records crosses hundreds of times.
GC_YOUNG_THRESHOLD = 100_000


def _tune_gc() -> None:
    """Fewer, later collections for a daemon whose objects are short-lived and acyclic
    (records are freed by reference counting as soon as their batch is committed): what start-up
    built (modules, codecs, settings) is frozen out of every collection, and the young
    generation is collected every :data:`GC_YOUNG_THRESHOLD` allocations instead of 700. Garbage
    in cycles then waits a little longer: see docs/operations.md (memory bound)."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def _ui(settings: Settings, args: argparse.Namespace) -> int:
    """The web view and its API alone: reads any DSN (a replica will do), no ZeroMQ."""
    import signal

    if settings.http_bind is None:
        raise SystemExit("cmbagent-collector ui: --http off leaves nothing to serve")
    _check_http_exposure(settings)
    dsn, _server = database(settings)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        async with _http(settings, dsn):
            await stop.wait()

    _run_async(run())
    return 0


def _check_http_exposure(settings: Settings) -> None:
    try:
        settings.check_http_exposure()
    except SettingsError as exc:
        raise SystemExit(f"cmbagent-collector: {exc}") from None


def _http(settings: Settings, dsn: str, **probes: Any) -> AbstractAsyncContextManager[None]:
    """The web server while the block runs, or nothing with ``--http off``."""
    if settings.http_bind is None:
        return nullcontext()
    from .web import serving

    return serving(settings.http_bind, dsn, schema=settings.schema, token=settings.http_token,
                   **probes)


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

    if not (args.older_than or args.run or args.quarantine_older_than):
        raise SystemExit("prune: say what to remove: --older-than AGE and/or --run ID, "
                         "or --quarantine-older-than AGE")
    try:
        age, quarantine_age = (prune.parse_age(text) if text else None
                               for text in (args.older_than, args.quarantine_older_than))
    except ValueError as exc:
        raise SystemExit(f"prune: {exc}") from None
    dsn, _server = database(settings)

    async def run() -> None:
        connection = await connect(dsn, settings.schema)
        try:
            if age or args.run:
                await _prune_runs(connection, age, args)
            if quarantine_age:
                removed = await prune.prune_quarantine(connection, quarantine_age,
                                                       args.batch_size, dry_run=args.dry_run)
                print(f"{'dry run: would remove' if args.dry_run else 'removed'} {removed} "
                      f"quarantined inputs last seen more than {args.quarantine_older_than} ago")
        finally:
            await connection.close()

    asyncio.run(run())
    return 0


async def _prune_runs(connection: Any, age: timedelta | None, args: argparse.Namespace) -> None:
    from . import prune

    runs = await prune.select_runs(connection, older_than=age, run_ids=args.run)
    for candidate in runs:
        print(f"{'would remove' if args.dry_run else 'removing'} run {candidate.run_id} "
              f"({candidate.status}, started {candidate.started_at}, {candidate.events} events)")
    if args.dry_run:
        print(f"dry run: {len(runs)} runs would be removed")
    else:
        removed = await prune.prune(connection, runs, args.batch_size)
        print(f"removed {len(runs)} runs ({removed} rows)")


def _keys(settings: Settings, args: argparse.Namespace) -> int:
    import tempfile

    import zmq.auth

    directory: Path = args.directory
    targets = [directory / f"{args.name}.key", directory / f"{args.name}.key_secret"]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not args.force:
        raise SystemExit(f"keys: {' and '.join(existing)} exist; agents and collectors using "
                         "them would be locked out. Use another --name, or --force to replace")
    directory.mkdir(parents=True, exist_ok=True)
    # Made in a private (0700) directory, then moved into place with their final modes: the
    # secret is never readable by others, not even while it is written.
    with tempfile.TemporaryDirectory(dir=directory, prefix=".keys-") as private:
        public_file, secret_file = map(Path, zmq.auth.create_certificates(private, args.name))
        secret_file.chmod(0o600)
        public_file.chmod(0o644)
        for made, target in zip((public_file, secret_file), targets, strict=True):
            made.replace(target)
    public = zmq.auth.load_certificate(targets[0])[0].decode()
    print(f"public key file: {targets[0]}\nsecret key file: {targets[1]}\npublic key: {public}")
    return 0


Query = Callable[[argparse.Namespace], reads.Read[Any]]  # a read command's arguments → its read


def _show(parser: argparse.ArgumentParser, query: Query, text: Callable[[Any], str]) -> None:
    """Make ``parser``'s command a read: ``query(args)`` through one read-only connection,
    printed as ``text`` or, with ``--json``, as JSON; quiet unless something is wrong."""
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")

    def command(settings: Settings, args: argparse.Namespace) -> int:
        dsn, _server = database(settings)
        try:
            result = asyncio.run(reads.once(dsn, settings.schema, query(args)))
        except reads.NotFound as exc:
            raise SystemExit(f"cmbagent-collector: {exc}") from None
        except asyncpg.UndefinedTableError:
            raise SystemExit(
                f"cmbagent-collector: the database has no tracking tables in schema "
                f"{settings.schema!r}: run `cmbagent-collector migrate` (or start `serve` "
                "once), or pass the --schema they are in") from None
        print(json.dumps(result, indent=2) if args.json else text(result))
        return 0

    parser.set_defaults(command=command, quiet=True)


def _runs(args: argparse.Namespace) -> reads.Read[Any]:
    return partial(reads.runs, page=reads.RunFilter(limit=args.limit))


def _tree(args: argparse.Namespace) -> reads.Read[Any]:
    return partial(reads.tree, run=args.run)


def _events(args: argparse.Namespace) -> reads.Read[Any]:
    return partial(reads.events, run=args.run, node=args.node, event_type=args.event_type,
                   after=args.after, limit=args.limit)


async def _probe(dsn: str) -> None:
    connection = await asyncpg.connect(dsn, timeout=10)
    await connection.close()


async def _with_retries(connect: Callable[[], Awaitable[None]], dsn: str,
                        attempts: int = 10) -> None:
    """``connect()``, retried while the server is unreachable or starting (about 9 s in all);
    then, or at once for an error retrying cannot mend, a one-line exit."""
    for attempt in range(1, attempts + 1):
        try:
            await connect()
            return
        except (OSError, asyncio.TimeoutError, asyncpg.CannotConnectNowError) as exc:
            if attempt == attempts:
                raise SystemExit(f"cannot connect to {redact_dsn(dsn)} after {attempts} "
                                 f"attempts ({exc}); is PostgreSQL running there?") from None
            log.warning("cannot connect to %s (%s); %d retries remaining", redact_dsn(dsn), exc,
                        attempts - attempt)
            await asyncio.sleep(min(2.0, 0.2 * attempt))
        except asyncpg.PostgresError as exc:  # refused: wrong password, no such database, ...
            raise SystemExit(f"the database at {redact_dsn(dsn)} refused the collector: "
                             f"{exc}") from None


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
    for name in ("http_bind", "http_token", "curve_secret_key_file", "curve_allow_dir",
                 "max_message_bytes"):
        if getattr(args, name, None):
            overrides[name] = getattr(args, name)
    return overrides


def _global_options(parser: argparse.ArgumentParser, **default: Any) -> None:
    parser.add_argument("--dsn", help="PostgreSQL URL (env CMBAGENT_TRACKING_DATABASE_URL); "
                        "default: an embedded server under the data directory", **default)
    parser.add_argument("--schema", help="PostgreSQL schema of the tracking tables "
                        "(env CMBAGENT_TRACKING_SCHEMA; default cmbagent_tracking)", **default)
    parser.add_argument("--data-dir", type=Path,
                        help="state directory (env CMBAGENT_TRACKING_HOME); "
                        "default ~/.local/share/cmbagent-tracking", **default)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging", **default)
    parser.add_argument("--log-json", action="store_true", help="one JSON object per log line",
                        **default)


class _CommandParser(argparse.ArgumentParser):
    """A command's parser: it takes the global options too, so they may come before or after
    the command (``serve --dsn URL`` as well as ``--dsn URL serve``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Suppressed defaults: an option not given after the command keeps what came before it.
        _global_options(self, default=argparse.SUPPRESS)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cmbagent-collector",
        description="Receive cmbagent-tracking events over ZeroMQ and store them in PostgreSQL.")
    _global_options(parser)
    commands = parser.add_subparsers(required=True, metavar="COMMAND",
                                     parser_class=_CommandParser)

    serve = commands.add_parser("serve", help="run the collector daemon")
    serve.add_argument("--bind", action="append",
                       help="ZeroMQ endpoint to listen on, repeatable "
                       "(env CMBAGENT_COLLECTOR_BIND; default tcp://127.0.0.1:5555)")
    serve.add_argument("--no-migrate", action="store_true",
                       help="do not apply migrations at start")
    _http_flags(serve)
    serve.add_argument("--max-message-bytes", type=int, metavar="N",
                       help="refuse larger messages before reading them (default 32 MiB; "
                       "frames over the protocol's 8 MiB are quarantined)")
    serve.add_argument("--curve-secret-key-file", type=Path, metavar="FILE",
                       help="turn on CurveZMQ with this key pair (env "
                       "CMBAGENT_CURVE_SECRET_KEY_FILE); needs --curve-allow-dir")
    serve.add_argument("--curve-allow-dir", type=Path, metavar="DIR",
                       help="accept only clients whose public key file is in DIR "
                       "(env CMBAGENT_CURVE_ALLOW_DIR)")
    from .otlp.commands import add_serve_flags

    add_serve_flags(serve)
    serve.set_defaults(command=_serve)

    ui = commands.add_parser("ui", help="serve only the web view and its JSON API (no ZeroMQ), "
                             "against any database, a read replica too")
    _http_flags(ui)
    ui.set_defaults(command=_ui)

    prune = commands.add_parser("prune", help="remove runs with their nodes, events and costs")
    prune.add_argument("--older-than", metavar="AGE",
                       help="runs that ended (or, if running, started) more than AGE ago: 30d, 12h")
    prune.add_argument("--run", action="append", type=uuid.UUID, metavar="ID",
                       help="a run to remove, repeatable")
    prune.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")
    prune.add_argument("--quarantine-older-than", metavar="AGE",
                       help="also remove quarantined inputs last seen more than AGE ago")
    prune.add_argument("--batch-size", type=positive, default=5000,
                       help="rows deleted per transaction (default 5000)")
    prune.set_defaults(command=_prune)

    keys = commands.add_parser(
        "keys", help="make a CurveZMQ key pair (for the collector or an agent)")
    keys.add_argument("directory", type=Path)
    keys.add_argument("--name", default="collector",
                      help="file name stem: NAME.key (public) and NAME.key_secret")
    keys.add_argument("--force", action="store_true",
                      help="replace an existing key pair of that name (its users are locked out)")
    keys.set_defaults(command=_keys)

    migrate = commands.add_parser("migrate", help="apply the schema migrations")
    migrate.add_argument("revision", nargs="?", default="head")
    migrate.set_defaults(command=_migrate)

    downgrade = commands.add_parser("downgrade", help="revert schema migrations")
    downgrade.add_argument("revision", nargs="?", default="base")
    downgrade.set_defaults(command=_downgrade)

    _add_read_commands(commands)
    from .otlp.commands import add_commands as add_otlp_commands

    add_otlp_commands(commands)
    return parser


def _add_read_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    runs = commands.add_parser("runs", help="list recent runs, newest first")
    runs.add_argument("--limit", type=positive, default=20, help="how many (default 20)")
    _show(runs, _runs, render.runs)

    tree = commands.add_parser(
        "tree", help="show a run's DAG: status, duration, events, tokens and cost per node")
    tree.add_argument("run", type=run_id, help="the run's id (see `runs`)")
    _show(tree, _tree, render.tree)

    events = commands.add_parser("events", help="list a run's or a node's events in order")
    events.add_argument("run", type=run_id, help="the run's id (see `runs`)")
    events.add_argument("--node", help="only this node and its sub-agent nodes: a node id, a "
                        "name (step_3) or a path (step_3/engineer), as `tree` shows them")
    events.add_argument("--type", dest="event_type", help="only this event_type")
    events.add_argument("--after", type=execution_order, default=0, metavar="ORDER",
                        help="start after this execution_order (the next page)")
    events.add_argument("--limit", type=positive, default=50, help="page size (default 50)")
    _show(events, _events, render.events)


def _http_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--http", "--metrics-bind", dest="http_bind", metavar="HOST:PORT",
                        help="serve the web view, its JSON API, /livez, /readyz and /metrics here; "
                        "'off' for none (env CMBAGENT_HTTP_BIND, formerly CMBAGENT_METRICS_BIND; "
                        "default 127.0.0.1:8790)")
    parser.add_argument("--http-token", metavar="TOKEN",
                        help="required to bind anything but loopback (env CMBAGENT_HTTP_TOKEN, "
                        "which keeps it out of the process list)")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname,
                 "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _log_config(verbose: bool, as_json: bool, quiet: bool = False) -> dict[str, Any]:
    """Logging to stderr; ``quiet`` (the read commands): warnings and errors only."""
    level = "DEBUG" if verbose else "WARNING" if quiet else "INFO"
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
        "loggers": {"collector": {"level": level},
                    "alembic": {"level": "WARNING"}},
    }


if __name__ == "__main__":
    sys.exit(main())
