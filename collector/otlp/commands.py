"""``cmbagent-collector export RUN_ID... --otlp URL`` and ``serve --export-otlp URL``."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from ..metrics import Metrics
from ..options import database, run_id
from ..reads import NotFound
from ..settings import Settings
from .export import Endpoint, ExportError, export_runs
from .follow import Follower


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``export`` on ``cmbagent-collector``'s parser."""
    export = commands.add_parser(
        "export", help="send runs to an OpenTelemetry backend over OTLP/HTTP (Phoenix, "
        "Langfuse, Jaeger, Tempo, ...)")
    export.add_argument("runs", nargs="+", type=run_id, metavar="RUN_ID")
    export.add_argument("--otlp", required=True, metavar="URL",
                        help="the endpoint; /v1/traces is added when the URL lacks it")
    _endpoint_flags(export, "")
    export.set_defaults(command=_export)


def add_serve_flags(serve: argparse.ArgumentParser) -> None:
    """``serve``'s continuous export: ``--export-otlp URL`` and its options."""
    serve.add_argument("--export-otlp", metavar="URL",
                       help="send each run to this OTLP/HTTP endpoint once it has ended "
                       "(resumes where it stopped; /v1/traces is added when missing)")
    _endpoint_flags(serve, "export-")


def _endpoint_flags(parser: argparse.ArgumentParser, prefix: str) -> None:
    parser.add_argument(f"--{prefix}header", action="append", default=[], metavar="NAME=VALUE",
                        help="an HTTP header for the endpoint (credentials), repeatable")
    parser.add_argument(f"--{prefix}content", action="store_true",
                        help="include message content (inputs and outputs; already redacted "
                        "by the shim); left out by default")
    parser.add_argument(f"--{prefix}service-name", default="cmbagent",
                        help="the spans' service.name (default cmbagent)")


@asynccontextmanager
async def following(args: argparse.Namespace, dsn: str, schema: str,
                    metrics: Metrics) -> AsyncIterator[None]:
    """While the block runs, the continuous export ``serve`` was asked for, if any."""
    if not args.export_otlp:
        yield
        return
    try:
        endpoint = Endpoint.parse(args.export_otlp, args.export_header, args.export_service_name)
    except ValueError as exc:
        raise SystemExit(f"serve --export-header: {exc}") from None
    task = asyncio.create_task(Follower(dsn, schema, endpoint, metrics,
                                            content=args.export_content).run())
    try:
        yield
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


def _export(settings: Settings, args: argparse.Namespace) -> int:
    try:
        endpoint = Endpoint.parse(args.otlp, args.header, args.service_name)
    except ValueError as exc:
        raise SystemExit(f"export: {exc}") from None
    dsn, _server = database(settings)
    try:
        sent = asyncio.run(export_runs(dsn, settings.schema, args.runs, endpoint,
                                       content=args.content))
    except (NotFound, ExportError) as exc:
        raise SystemExit(f"export: {exc}") from None
    print(f"exported {len(args.runs)} run(s), {sent} spans, to {endpoint.url}")
    return 0
