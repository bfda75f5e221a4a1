"""The read side: runs, a run's tree, events, one event and costs, as JSON-ready data.

The CLI's read commands (``cli``, through :func:`once`; ``render`` makes their text) and the web
view's JSON API (``collector.web.api``, through its pool) both call these, so ``--json`` and the
HTTP API have one shape. Results are plain JSON values (times as ISO 8601 strings): ``json.dumps``
takes them as they are. Nothing here prints. Every query is bounded by an index of the run it
reads, so it costs the same whatever else the database holds:

- ``runs``: keyset pages on ``workflow_runs_started``; per run, counts over
  ``execution_events_timeline`` and ``cost_records_node``.
- ``tree``: the run's nodes (``dag_nodes_tree``), edges (primary key), events per node
  (``execution_events_node``, index only) and costs per node (``cost_records_node``).
- ``events``: keyset pages on ``execution_order`` (``after``), never ``OFFSET``:
  ``execution_events_timeline``, ``execution_events_type`` with a type, and with a node one
  bounded scan of ``execution_events_node`` per node of the subtree, merged.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import asyncpg

from .schema import connect

Json = dict[str, Any]
T = TypeVar("T")
#: A read through a connection that gives a ``T`` (these functions, their arguments bound).
Read = Callable[[asyncpg.Connection], Awaitable[T]]

#: Session settings of every read connection: the read side can never write.
READ_ONLY = {"application_name": "cmbagent-collector-query",
             "default_transaction_read_only": "on"}


class NotFound(LookupError):
    """What was asked for is not in the database; the message says how to find it."""


async def once(dsn: str, schema: str, read: Read[T]) -> T:
    """``read`` through one short-lived read-only connection (a command's way; the web view
    keeps a pool of them)."""
    connection = await connect(dsn, schema, **READ_ONLY)
    try:
        return await read(connection)
    finally:
        await connection.close()


@dataclass(frozen=True)
class RunFilter:
    """Which runs ``runs`` lists: a page of them, newest first, after an optional keyset."""

    limit: int = 20
    status: str | None = None
    text: str | None = None  # a substring of the task, any case
    user: str | None = None  # meta.user, as given to ``tracker.run(task, user=...)``
    since: datetime | None = None
    until: datetime | None = None
    before: tuple[datetime, uuid.UUID] | None = None  # (started_at, id) of the previous page's last


_RUNS_SQL = """
SELECT r.*,
       (SELECT count(*) FROM execution_events e WHERE e.run_id = r.id) AS events,
       c.tokens, c.cost_usd
FROM (SELECT * FROM workflow_runs r WHERE {where}  -- the page first: totals for it alone
      ORDER BY started_at DESC NULLS LAST, id DESC LIMIT $1) r
LEFT JOIN LATERAL (SELECT sum(total_tokens) AS tokens, sum(cost_usd) AS cost_usd
                   FROM cost_records WHERE run_id = r.id) c ON true
ORDER BY r.started_at DESC NULLS LAST, r.id DESC
"""
_RUN_SQL = "SELECT * FROM workflow_runs WHERE id = $1"
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
e.agent_name, e.status, e."timestamp", e.started_at, e.duration_ms, e.depth, e.inputs,
e.outputs, e.meta, e.error_message
"""
_COST_TOTALS = """
sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens,
sum(total_tokens) AS tokens, sum(cost_usd) AS cost_usd
"""


async def runs(connection: asyncpg.Connection, page: RunFilter) -> list[Json]:
    """A page of runs, newest first, with their events, tokens and cost."""
    params: list[Any] = [page.limit]
    where = ["true"]

    def add(condition: str, value: Any) -> None:
        params.append(value)
        where.append(condition.replace("?", f"${len(params)}"))

    if page.status:
        add("r.status = ?", page.status)
    if page.text:
        add("strpos(lower(r.task_description), lower(?)) > 0", page.text)
    if page.user:
        add("r.meta->>'user' = ?", page.user)
    if page.since:
        add("r.started_at >= ?", page.since)
    if page.until:
        add("r.started_at < ?", page.until)
    if page.before:
        params.extend(page.before)
        where.append(f"(r.started_at, r.id) < (${len(params) - 1}, ${len(params)})")
    sql = _RUNS_SQL.format(where=" AND ".join(where))
    return [_run_json(row) for row in await connection.fetch(sql, *params)]


async def tree(connection: asyncpg.Connection, run: uuid.UUID) -> Json:
    """The run, its nodes as a forest with subtree totals, its edges and its totals."""
    row = await connection.fetchrow(_RUN_SQL, run)
    if row is None:
        raise NotFound(f"no run {run}; `cmbagent-collector runs` lists the stored runs")
    counts = {r["node_id"]: r["events"] for r in await connection.fetch(_NODE_EVENTS_SQL, run)}
    costs = {r["node_id"]: r for r in await connection.fetch(_NODE_COSTS_SQL, run)}
    nodes = [_node_json(node, counts.get(node["id"], 0), costs.get(node["id"]))
             for node in await connection.fetch(_NODES_SQL, run)]
    edges = [{"from": str(r["from_node_id"]), "to": str(r["to_node_id"]),
              "dependency_type": r["dependency_type"], "condition": r["condition"]}
             for r in await connection.fetch(_EDGES_SQL, run)]
    outside = {"events": counts.get(None, 0), "tokens": _int(costs.get(None), "tokens"),
               "cost_usd": _float(costs.get(None), "cost_usd")}
    return {"run": _run_json(row), "nodes": _nest(nodes), "edges": edges,
            "outside_nodes": outside,
            "totals": {"events": sum(counts.values()),
                       "tokens": sum(_int(c, "tokens") for c in costs.values()),
                       "cost_usd": sum(_float(c, "cost_usd") for c in costs.values())}}


async def events(connection: asyncpg.Connection, run: uuid.UUID, *, node: str | None = None,
                 event_type: str | None = None, after: int = 0, limit: int = 50) -> Json:
    """A page of the run's (or a node's subtree's) events in ``execution_order``."""
    await _require_run(connection, run)
    params: list[Any] = [run, after, limit]
    where = "e.run_id = $1 AND e.execution_order > $2"
    if event_type:
        params.append(event_type)
        where += f" AND e.event_type = ${len(params)}"
    if node:
        params.append(await _subtree(connection, run, node))
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
    found = [_event_json(row) for row in await connection.fetch(sql, *params)]
    full = len(found) == limit
    return {"run": str(run), "events": found,
            "next_after": found[-1]["execution_order"] if full else None}


async def event(connection: asyncpg.Connection, run: uuid.UUID, event_id: uuid.UUID) -> Json:
    """One event, as in an ``events`` page."""
    row = await connection.fetchrow(
        f"SELECT {_EVENT_COLUMNS}, n.name AS node_name FROM execution_events e "
        "LEFT JOIN dag_nodes n ON n.run_id = e.run_id AND n.id = e.node_id "
        "WHERE e.run_id = $1 AND e.id = $2", run, event_id)
    if row is None:
        raise NotFound(f"no event {event_id} in run {run}; `cmbagent-collector events {run}` "
                       "lists its events")
    return _event_json(row)


async def costs(connection: asyncpg.Connection, run: uuid.UUID | None = None,
                days: int = 30) -> Json:
    """Tokens and cost by agent and by model (of one run, or of the last ``days``), by run and
    by day."""
    params: list[Any] = [run] if run is not None else [days]
    if run is not None:
        await _require_run(connection, run)
        scope = "run_id = $1"
    else:
        scope = "\"timestamp\" >= now() - make_interval(days => $1)"

    async def grouped(key: str) -> list[Json]:
        rows = await connection.fetch(
            f"SELECT {key} AS key, {_COST_TOTALS} FROM cost_records WHERE {scope} "
            "GROUP BY 1 ORDER BY cost_usd DESC NULLS LAST, 1", *params)
        return [_cost_json(row) for row in rows]

    return {"run": str(run) if run else None, "days": None if run else days,
            "by_agent": await grouped("agent_name"), "by_model": await grouped("model"),
            "by_run": await grouped("run_id::text"),
            "by_day": await grouped("to_char(date_trunc('day', \"timestamp\"), 'YYYY-MM-DD')")}


async def _require_run(connection: asyncpg.Connection, run: uuid.UUID) -> None:
    if await connection.fetchval("SELECT 1 FROM workflow_runs WHERE id = $1", run) is None:
        raise NotFound(f"no run {run}; `cmbagent-collector runs` lists the stored runs")


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
    chosen: uuid.UUID = matches[0]["id"]
    return [chosen, *(r["id"] for r in rows if r["parent_node_id"] == chosen)]


# --- rows → JSON -----------------------------------------------------------------------------


def _run_json(row: asyncpg.Record) -> Json:
    meta = _jsonb(row["meta"]) or {}
    data = {"id": str(row["id"]), "session_id": str(row["session_id"]), "status": row["status"],
            "task": row["task_description"], "user": meta.get("user"),
            "started_at": _iso(row["started_at"]), "completed_at": _iso(row["completed_at"]),
            "duration_s": _duration(row), "error": row["error_message"]}
    if "events" in row.keys():
        data.update(events=row["events"], tokens=_int(row, "tokens"),
                    cost_usd=_float(row, "cost_usd"))
    else:
        data["meta"] = meta
    return data


def _node_json(row: asyncpg.Record, events: int, cost: asyncpg.Record | None) -> Json:
    return {
        "id": str(row["id"]),
        "parent_node_id": str(row["parent_node_id"]) if row["parent_node_id"] else None,
        "depth": row["depth"], "order_index": row["order_index"], "name": row["name"],
        "node_type": row["node_type"], "agent": row["agent"], "status": row["status"],
        "started_at": _iso(row["started_at"]), "completed_at": _iso(row["completed_at"]),
        "duration_s": _duration(row), "error": row["error_message"],
        "meta": _jsonb(row["meta"]), "events": events,
        "prompt_tokens": _int(cost, "prompt_tokens"),
        "completion_tokens": _int(cost, "completion_tokens"),
        "tokens": _int(cost, "tokens"), "cost_usd": _float(cost, "cost_usd"),
    }


def _nest(nodes: list[Json]) -> list[Json]:
    """Nodes as a forest (children under their parent, in order), with subtree totals."""
    by_id = {n["id"]: {**n, "children": []} for n in nodes}
    roots: list[Json] = []
    for node in by_id.values():
        parent = by_id.get(node["parent_node_id"] or "")
        (parent["children"] if parent is not None else roots).append(node)

    def add_totals(node: Json) -> Json:
        below = [add_totals(child) for child in node["children"]]
        totals: Json = {key: node[key] + sum(b[key] for b in below)
                        for key in ("events", "tokens", "cost_usd")}
        node["totals"] = totals
        return totals

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
            "timestamp": _iso(row["timestamp"]), "started_at": _iso(row["started_at"]),
            "duration_ms": row["duration_ms"], "depth": row["depth"],
            "inputs": _jsonb(row["inputs"]), "outputs": _jsonb(row["outputs"]),
            "meta": _jsonb(row["meta"]), "error": row["error_message"]}


def _cost_json(row: asyncpg.Record) -> Json:
    return {"key": row["key"], "prompt_tokens": _int(row, "prompt_tokens"),
            "completion_tokens": _int(row, "completion_tokens"), "tokens": _int(row, "tokens"),
            "cost_usd": _float(row, "cost_usd")}


def _jsonb(value: str | None) -> Any:
    return None if value is None else json.loads(value)


def _int(row: Any, key: str) -> int:
    return int(row[key] or 0) if row is not None else 0


def _float(row: Any, key: str) -> float:
    return float(row[key] or 0) if row is not None else 0.0


def _duration(row: Any) -> float | None:
    start, end = row["started_at"], row["completed_at"]
    return (end - start).total_seconds() if start and end else None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
