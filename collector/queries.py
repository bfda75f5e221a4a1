"""Read commands (``runs``, ``tree``, ``events``): their arguments and their text output.

The data comes from ``reads`` (the web view's JSON API uses the same functions, so ``--json``
and the API have one shape). Each command reads through one short-lived read-only connection.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import asyncpg

from . import reads
from .reads import Json, NotFound
from .schema import connect

# --- commands --------------------------------------------------------------------------------


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register the read commands on ``cmbagent-collector``'s parser."""
    runs = commands.add_parser("runs", help="list recent runs, newest first")
    runs.add_argument("--limit", type=_positive, default=20, help="how many (default 20)")
    _json_flag(runs)
    runs.set_defaults(command=_command(_runs, _render_runs), quiet=True)

    tree = commands.add_parser(
        "tree", help="show a run's DAG: status, duration, events, tokens and cost per node")
    tree.add_argument("run", type=_run_id, help="the run's id (see `runs`)")
    _json_flag(tree)
    tree.set_defaults(command=_command(_tree, _render_tree), quiet=True)

    events = commands.add_parser("events", help="list a run's or a node's events in order")
    events.add_argument("run", type=_run_id, help="the run's id (see `runs`)")
    events.add_argument("--node", help="only this node and its sub-agent nodes: a node id, a "
                        "name (step_3) or a path (step_3/engineer), as `tree` shows them")
    events.add_argument("--type", dest="event_type", help="only this event_type")
    events.add_argument("--after", type=_execution_order, default=0, metavar="ORDER",
                        help="start after this execution_order (the next page)")
    events.add_argument("--limit", type=_positive, default=50, help="page size (default 50)")
    _json_flag(events)
    events.set_defaults(command=_command(_events, _render_events), quiet=True)


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {value}")
    return value


def _execution_order(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**63:  # execution_order is a bigint
        raise argparse.ArgumentTypeError(f"an execution_order is 0 to {2**63 - 1}, not {value}")
    return value


def _run_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a run id; `cmbagent-collector runs` lists them") from None


Fetch = Callable[[asyncpg.Connection, argparse.Namespace], Awaitable[Any]]


def _command(fetch: Fetch, render: Callable[[Any], str]) -> Callable[..., int]:
    """A CLI command: fetch through one connection, print text or JSON."""

    def command(settings: Any, args: argparse.Namespace) -> int:
        from .cli import database

        dsn, _server = database(settings)
        try:
            result = asyncio.run(_with_connection(dsn, settings.schema, fetch, args))
        except NotFound as exc:
            print(f"cmbagent-collector: {exc}", file=sys.stderr)
            return 1
        except asyncpg.UndefinedTableError:
            print(f"cmbagent-collector: the database has no tracking tables in schema "
                  f"{settings.schema!r}: run `cmbagent-collector migrate` (or start `serve` "
                  "once), or pass the --schema they are in", file=sys.stderr)
            return 1
        print(reads.dumps(result, indent=2) if args.json else render(result))
        return 0

    return command


async def _with_connection(dsn: str, schema: str, fetch: Fetch,
                           args: argparse.Namespace) -> Any:
    connection = await connect(dsn, schema, **reads.READ_ONLY)
    try:
        return await fetch(connection, args)
    finally:
        await connection.close()


# --- arguments → reads ------------------------------------------------------------------------


async def _runs(connection: asyncpg.Connection, args: argparse.Namespace) -> list[Json]:
    return await reads.runs(connection, reads.RunFilter(limit=args.limit))


async def _tree(connection: asyncpg.Connection, args: argparse.Namespace) -> Json:
    return await reads.tree(connection, args.run)


async def _events(connection: asyncpg.Connection, args: argparse.Namespace) -> Json:
    return await reads.events(connection, args.run, node=args.node, event_type=args.event_type,
                              after=args.after, limit=args.limit)


# --- text ------------------------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.1f}s"


def _cost(value: float) -> str:
    return f"${value:.4f}"


def _clip(text: Any, width: int) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _render_runs(runs: list[Json]) -> str:
    if not runs:
        return "no runs stored yet"
    lines = [f"{'RUN':<36}  {'STATUS':<9}  {'STARTED':<19}  {'DURATION':>8}  {'EVENTS':>7}  "
             f"{'COST':>9}  TASK"]
    for run in runs:
        lines.append(f"{run['id']:<36}  {run['status']:<9}  {_time(run['started_at']):<19}  "
                     f"{_seconds(run['duration_s']):>8}  {run['events']:>7}  "
                     f"{_cost(run['cost_usd']):>9}  {_clip(run['task'] or '', 50)}")
    return "\n".join(lines)


def _render_tree(tree: Json) -> str:
    run, totals = tree["run"], tree["totals"]
    lines = [f"run {run['id']}  {run['status']}  {_seconds(run['duration_s'])}  "
             f"task: {_clip(run['task'] or '-', 70)}",
             f"{totals['events']} events, {totals['tokens']} tokens, {_cost(totals['cost_usd'])}"
             f" ({tree['outside_nodes']['events']} events outside any node)", "",
             f"{'NODE':<34}{'TYPE':<14}{'STATUS':<11}{'DURATION':>9}{'EVENTS':>8}{'TOKENS':>8}"
             f"{'COST':>10}  NOTE"]
    incoming = {e["to"]: e for e in tree["edges"]}
    names = {n["id"]: n["name"] for root in tree["nodes"] for n in (root, *root["children"])}

    def line(node: Json, prefix: str) -> None:
        t = node["totals"]
        lines.append(f"{prefix + (node['name'] or node['id']):<34}{node['node_type']:<14}"
                     f"{node['status']:<11}{_seconds(node['duration_s']):>9}{t['events']:>8}"
                     f"{t['tokens']:>8}{_cost(t['cost_usd']):>10}  "
                     f"{_note(node, incoming.get(node['id']), names)}".rstrip())

    for root in tree["nodes"]:
        line(root, "")
        for i, child in enumerate(root["children"]):
            line(child, "  └ " if i == len(root["children"]) - 1 else "  ├ ")
    return "\n".join(lines)


def _note(node: Json, edge: Json | None, names: dict[str, str]) -> str:
    """What a reader needs beyond the columns: branches, hypotheses, errors."""
    meta = node["meta"] or {}
    notes = []
    if edge is not None and edge["dependency_type"] != "sequential":
        notes.append(f"{edge['dependency_type']} from {names.get(edge['from'], edge['from'])}"
                     f" [{edge['condition']}]")
    if node["node_type"] == "branch_point" and meta.get("hypothesis"):
        notes.append(f"hypothesis: {_clip(meta['hypothesis'], 60)}")
    if meta.get("forced_acceptance"):
        notes.append(f"accepted: max_redos={meta.get('max_redos')} reached")
    if node["error"]:
        notes.append(f"error: {_clip(node['error'], 60)}")
    return "; ".join(notes)


def _render_events(page: Json) -> str:
    events = page["events"]
    if not events:
        return "no events"
    lines = [f"{'ORDER':>8}  {'TIME':<12}  {'TYPE':<28}{'STATUS':<10}{'AGENT':<18}{'NODE':<22}"
             f"{'MS':>7}  DETAIL"]
    for e in events:
        kind = e["event_type"] + (f"/{e['event_subtype']}" if e["event_subtype"] else "")
        duration = f"{e['duration_ms']:.0f}" if e["duration_ms"] is not None else "-"
        lines.append(f"{e['execution_order']:>8}  {e['timestamp'].strftime('%H:%M:%S.%f')[:12]}  "
                     f"{_clip(kind, 27):<28}{e['status']:<10}"
                     f"{_clip(e['agent_name'] or '-', 17):<18}"
                     f"{_clip(e['node'] or '-', 21):<22}{duration:>7}  {_detail(e)}".rstrip())
    if page["next_after"] is not None:
        lines.append(f"-- more: --after {page['next_after']}")
    return "\n".join(lines)


def _detail(event: Json) -> str:
    if event["error"]:
        return "error: " + _clip(event["error"], 60)
    payload = event["inputs"] if event["inputs"] not in (None, {}) else event["outputs"]
    if payload in (None, {}):
        return ""
    return _clip(json.dumps(payload, ensure_ascii=False, separators=(",", ":"),
                            default=str), 70)
