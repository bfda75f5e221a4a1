"""``cmbagent-collector export RUN_ID... --otlp URL``."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from ..queries import _run_id
from ..reads import NotFound
from .export import Endpoint, ExportError, export_runs


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``export`` on ``cmbagent-collector``'s parser."""
    export = commands.add_parser(
        "export", help="send runs to an OpenTelemetry backend over OTLP/HTTP (Phoenix, "
        "Langfuse, Jaeger, Tempo, ...)")
    export.add_argument("runs", nargs="+", type=_run_id, metavar="RUN_ID")
    export.add_argument("--otlp", required=True, metavar="URL",
                        help="the endpoint; /v1/traces is added when the URL lacks it")
    export.add_argument("--header", action="append", default=[], metavar="NAME=VALUE",
                        help="an HTTP header for the endpoint (credentials), repeatable")
    export.add_argument("--content", action="store_true",
                        help="include message content (inputs and outputs; already redacted "
                        "by the shim); left out by default")
    export.add_argument("--service-name", default="cmbagent",
                        help="the spans' service.name (default cmbagent)")
    export.set_defaults(command=_export)


def _export(settings: Any, args: argparse.Namespace) -> int:
    from ..cli import database

    try:
        endpoint = Endpoint.parse(args.otlp, args.header, args.service_name)
    except ValueError as exc:
        raise SystemExit(f"export: {exc}") from None
    dsn, _server = database(settings)
    try:
        sent = asyncio.run(export_runs(dsn, args.runs, endpoint, content=args.content))
    except (NotFound, ExportError) as exc:
        raise SystemExit(f"export: {exc}") from None
    print(f"exported {len(args.runs)} run(s), {sent} spans, to {endpoint.url}")
    return 0
