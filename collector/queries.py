"""Read commands (``runs``, ``tree``, ``events``): the SQL behind them and their output.

Each command reads through one short-lived connection and prints readable text, or JSON with
``--json``. Every query is bounded by the run's indexes, so it costs the same whatever else the
database holds:

- ``runs``: ``workflow_runs_started``; per run, counts over ``execution_events_timeline`` and
  ``cost_records_node``.
- ``tree``: the run's nodes (``dag_nodes_tree``), edges (primary key), events per node
  (``execution_events_node``, index only) and costs per node (``cost_records_node``).
- ``events``: keyset pages on ``execution_order`` (``--after``), never ``OFFSET``:
  ``execution_events_timeline``, ``execution_events_type`` with ``--type``, and with ``--node``
  one bounded scan of ``execution_events_node`` per node of the subtree, merged.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from .schema import connect

Json = dict[str, Any]

_RUNS_SQL = """
SELECT r.id, r.session_id, r.status, r.started_at, r.completed_at, r.task_description,
       r.error_message,
       (SELECT count(*) FROM execution_events e WHERE e.run_id = r.id) AS events,
       c.tokens, c.cost_usd
FROM (SELECT * FROM workflow_runs  -- the page first: the totals are computed for it alone
      ORDER BY started_at DESC NULLS LAST, id DESC LIMIT $1) r
LEFT JOIN LATERAL (SELECT sum(total_tokens) AS tokens, sum(cost_usd) AS cost_usd
                   FROM cost_records WHERE run_id = r.id) c ON true
ORDER BY r.started_at DESC NULLS LAST, r.id DESC
"""
_RUN_SQL = """
SELECT id, session_id, status, started_at, completed_at, task_description, error_message, meta
FROM workflow_runs WHERE id = $1
"""
_NODES_SQL = """
SELECT id, parent_node_id, depth, node_type, name, agent, status, order_index, started_at,
       completed_at, error_message, meta
FROM dag_nodes WHERE run_id = $1 ORDER BY depth, order_index, started_at
"""
_EDGES_SQL = """
SELECT from_node_id, to_node_id, dependency_type, condition FROM dag_edges WHERE run_id = $1
"""
_NODE_EVENTS_SQL = """
SELECT node_id, count(*) AS events FROM execution_events WHERE run_id = $1 GROUP BY node_id
"""
_NODE_COSTS_SQL = """
SELECT node_id, sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens,
       sum(total_tokens) AS tokens, sum(cost_usd) AS cost_usd
FROM cost_records WHERE run_id = $1 GROUP BY node_id
"""
_EVENT_COLUMNS = """
e.execution_order, e.id, e.node_id, e.parent_event_id, e.event_type, e.event_subtype,
e.agent_name, e.status, e."timestamp", e.duration_ms, e.depth, e.inputs, e.outputs, e.meta,
e.error_message
"""


# --- commands --------------------------------------------------------------------------------


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register the read commands on ``cmbagent-collector``'s parser."""
    runs = commands.add_parser("runs", help="list recent runs, newest first")
    runs.add_argument("--limit", type=_positive, default=20, help="how many (default 20)")
    _json_flag(runs)
    runs.set_defaults(command=_command(_runs, _render_runs))

    tree = commands.add_parser(
        "tree", help="show a run's DAG: status, duration, events, tokens and cost per node")
    tree.add_argument("run", type=_run_id, help="the run's id (see `runs`)")
    _json_flag(tree)
    tree.set_defaults(command=_command(_tree, _render_tree))

    events = commands.add_parser("events", help="list a run's or a node's events in order")
    events.add_argument("run", type=_run_id, help="the run's id (see `runs`)")
    events.add_argument("--node", help="only this node and its sub-agent nodes: a node id, a "
                        "name (step_3) or a path (step_3/engineer), as `tree` shows them")
    events.add_argument("--type", dest="event_type", help="only this event_type")
    events.add_argument("--after", type=int, default=0, metavar="ORDER",
                        help="start after this execution_order (the next page)")
    events.add_argument("--limit", type=_positive, default=50, help="page size (default 50)")
    _json_flag(events)
    events.set_defaults(command=_command(_events, _render_events))


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {value}")
    return value


def _run_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a run id; `cmbagent-collector runs` lists them") from None


class NotFound(LookupError):
    """What was asked for is not in the database; the message says how to find it."""


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
        print(json.dumps(result, default=_json_value, indent=2) if args.json else render(result))
        return 0

    return command


async def _with_connection(dsn: str, schema: str, fetch: Fetch,
                           args: argparse.Namespace) -> Any:
    connection = await connect(dsn, schema, application_name="cmbagent-collector-query",
                               default_transaction_read_only="on")
    try:
        return await fetch(connection, args)
    finally:
        await connection.close()


# --- the data behind each command --------------------------------------------------------------


async def _runs(connection: asyncpg.Connection, args: argparse.Namespace) -> list[Json]:
    return [_run_json(row) for row in await connection.fetch(_RUNS_SQL, args.limit)]


async def _tree(connection: asyncpg.Connection, args: argparse.Namespace) -> Json:
    run = await connection.fetchrow(_RUN_SQL, args.run)
    if run is None:
        raise NotFound(f"no run {args.run}; `cmbagent-collector runs` lists the stored runs")
    counts = {r["node_id"]: r["events"] for r in await connection.fetch(_NODE_EVENTS_SQL, args.run)}
    costs = {r["node_id"]: r for r in await connection.fetch(_NODE_COSTS_SQL, args.run)}
    nodes = [_node_json(row, counts.get(row["id"], 0), costs.get(row["id"]))
             for row in await connection.fetch(_NODES_SQL, args.run)]
    edges = [{"from": str(r["from_node_id"]), "to": str(r["to_node_id"]),
              "dependency_type": r["dependency_type"], "condition": r["condition"]}
             for r in await connection.fetch(_EDGES_SQL, args.run)]
    outside = {"events": counts.get(None, 0), "tokens": _int(costs.get(None), "tokens"),
               "cost_usd": _float(costs.get(None), "cost_usd")}
    return {"run": {**_run_json(run), "meta": _jsonb(run["meta"])},
            "nodes": _nest(nodes), "edges": edges, "outside_nodes": outside,
            "totals": {"events": sum(counts.values()),
                       "tokens": sum(_int(c, "tokens") for c in costs.values()),
                       "cost_usd": sum(_float(c, "cost_usd") for c in costs.values())}}


async def _events(connection: asyncpg.Connection, args: argparse.Namespace) -> Json:
    if await connection.fetchval("SELECT 1 FROM workflow_runs WHERE id = $1", args.run) is None:
        raise NotFound(f"no run {args.run}; `cmbagent-collector runs` lists the stored runs")
    params: list[Any] = [args.run, args.after, args.limit]
    where = "e.run_id = $1 AND e.execution_order > $2"
    if args.event_type:
        params.append(args.event_type)
        where += f" AND e.event_type = ${len(params)}"
    if args.node:
        params.append(await _subtree(connection, args.run, args.node))
        # One index range per node, each cut at the page size, merged: a page costs the same
        # however many events the run or the node has.
        sql = (f"SELECT {_EVENT_COLUMNS}, n.name AS node_name "
               f"FROM unnest(${len(params)}::uuid[]) AS k(node_id) CROSS JOIN LATERAL ("
               f"SELECT * FROM execution_events e WHERE {where} AND e.node_id = k.node_id "
               "ORDER BY e.execution_order LIMIT $3) e "
               "LEFT JOIN dag_nodes n ON n.run_id = e.run_id AND n.id = e.node_id "
               "ORDER BY e.execution_order LIMIT $3")
    else:
        sql = (f"SELECT {_EVENT_COLUMNS}, n.name AS node_name FROM execution_events e "
               "LEFT JOIN dag_nodes n ON n.run_id = e.run_id AND n.id = e.node_id "
               f"WHERE {where} ORDER BY e.execution_order LIMIT $3")
    events = [_event_json(row) for row in await connection.fetch(sql, *params)]
    full = len(events) == args.limit
    return {"run": str(args.run), "events": events,
            "next_after": events[-1]["execution_order"] if full else None}


async def _subtree(connection: asyncpg.Connection, run: uuid.UUID, node: str) -> list[uuid.UUID]:
    """The ids of ``node`` (an id, a name, or ``parent/child`` names) and of its children."""
    rows = await connection.fetch(
        "SELECT id, parent_node_id, name FROM dag_nodes WHERE run_id = $1", run)
    matches = [r for r in rows if str(r["id"]) == node]
    if not matches:
        *parents, name = node.split("/")
        matches = [r for r in rows if r["name"] == name]
        if parents:
            parent_ids = {r["id"] for r in rows if r["name"] == parents[-1]}
            matches = [r for r in matches if r["parent_node_id"] in parent_ids]
    if len(matches) != 1:
        found = "no node" if not matches else f"{len(matches)} nodes"
        raise NotFound(f"{found} named {node!r} in run {run}; give a node id or a "
                       "parent/child path as `cmbagent-collector tree` shows them")
    chosen = matches[0]["id"]
    return [chosen, *(r["id"] for r in rows if r["parent_node_id"] == chosen)]


# --- rows → JSON -----------------------------------------------------------------------------


def _run_json(row: asyncpg.Record) -> Json:
    data = {"id": str(row["id"]), "session_id": str(row["session_id"]), "status": row["status"],
            "task": row["task_description"], "started_at": row["started_at"],
            "completed_at": row["completed_at"], "duration_s": _duration(row),
            "error": row["error_message"]}
    if "events" in row.keys():
        data.update(events=row["events"], tokens=_int(row, "tokens"),
                    cost_usd=_float(row, "cost_usd"))
    return data


def _node_json(row: asyncpg.Record, events: int, cost: asyncpg.Record | None) -> Json:
    return {
        "id": str(row["id"]),
        "parent_node_id": str(row["parent_node_id"]) if row["parent_node_id"] else None,
        "depth": row["depth"], "order_index": row["order_index"], "name": row["name"],
        "node_type": row["node_type"], "agent": row["agent"], "status": row["status"],
        "started_at": row["started_at"], "completed_at": row["completed_at"],
        "duration_s": _duration(row), "error": row["error_message"],
        "meta": _jsonb(row["meta"]), "events": events,
        "prompt_tokens": _int(cost, "prompt_tokens"),
        "completion_tokens": _int(cost, "completion_tokens"),
        "tokens": _int(cost, "tokens"), "cost_usd": _float(cost, "cost_usd"),
    }


def _nest(nodes: list[Json]) -> list[Json]:
    """Nodes as a forest (children under their parent, in order), with subtree totals."""
    by_id = {n["id"]: {**n, "children": []} for n in nodes}
    roots = []
    for node in by_id.values():
        parent = by_id.get(node["parent_node_id"] or "")
        (parent["children"] if parent is not None else roots).append(node)

    def add_totals(node: Json) -> Json:
        below = [add_totals(child) for child in node["children"]]
        node["totals"] = {key: node[key] + sum(b[key] for b in below)
                          for key in ("events", "tokens", "cost_usd")}
        return node["totals"]

    for root in roots:
        add_totals(root)
    return roots


def _event_json(row: asyncpg.Record) -> Json:
    return {"execution_order": row["execution_order"], "id": str(row["id"]),
            "node_id": str(row["node_id"]) if row["node_id"] else None,
            "node": row["node_name"],
            "parent_event_id": str(row["parent_event_id"]) if row["parent_event_id"] else None,
            "event_type": row["event_type"], "event_subtype": row["event_subtype"],
            "agent_name": row["agent_name"], "status": row["status"],
            "timestamp": row["timestamp"], "duration_ms": row["duration_ms"],
            "depth": row["depth"], "inputs": _jsonb(row["inputs"]),
            "outputs": _jsonb(row["outputs"]), "meta": _jsonb(row["meta"]),
            "error": row["error_message"]}


def _jsonb(value: str | None) -> Any:
    return None if value is None else json.loads(value)


def _int(row: Any, key: str) -> int:
    return int(row[key] or 0) if row is not None else 0


def _float(row: Any, key: str) -> float:
    return float(row[key] or 0) if row is not None else 0.0


def _duration(row: Any) -> float | None:
    start, end = row["started_at"], row["completed_at"]
    return (end - start).total_seconds() if start and end else None


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# --- text ------------------------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.1f}s"


def _cost(value: float) -> str:
    return f"${value:.4f}"


def _clip(text: Any, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


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
                     f"{_clip(kind, 27):<28}{e['status']:<10}{_clip(e['agent_name'] or '-', 17):<18}"
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
