"""Retention: remove runs with everything they own, and old quarantined inputs, a bounded
batch per transaction.

Each transaction deletes at most ``batch_size`` rows of one table, so ingestion, which takes
its own row locks on other rows, is never held up for long. Sessions left with no run go too.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta

import asyncpg

log = logging.getLogger(__name__)

# What a run owns, children first (``workflow_runs`` is deleted last, with its own id).
OWNED = ("execution_events", "cost_records", "dag_edges", "dag_nodes", "dropped_events")

_SELECT_RUNS = """
SELECT r.id, r.started_at, r.status,
       (SELECT count(*) FROM execution_events e WHERE e.run_id = r.id) AS events
FROM workflow_runs r
WHERE ($1::uuid[] IS NOT NULL AND r.id = ANY($1::uuid[]))
   OR ($2::interval IS NOT NULL AND coalesce(r.completed_at, r.started_at) < now() - $2::interval)
ORDER BY r.started_at NULLS FIRST
"""


@dataclass(frozen=True)
class Candidate:
    run_id: uuid.UUID
    started_at: object
    status: str
    events: int


async def select_runs(connection: asyncpg.Connection, *, older_than: timedelta | None,
                      run_ids: list[uuid.UUID] | None) -> list[Candidate]:
    rows = await connection.fetch(_SELECT_RUNS, run_ids or None, older_than)
    return [Candidate(r["id"], r["started_at"], r["status"], r["events"]) for r in rows]


async def prune(connection: asyncpg.Connection, runs: list[Candidate], batch_size: int) -> int:
    """Delete the runs; returns the number of rows removed in all tables."""
    removed = 0
    for run in runs:
        for table in OWNED:
            while True:
                # ctid: delete a bounded slice without needing a key per table.
                deleted = await connection.execute(
                    f"DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table} "
                    "WHERE run_id = $1 LIMIT $2))", run.run_id, batch_size)
                count = int(deleted.split()[-1])
                removed += count
                if count < batch_size:
                    break
        session = await connection.fetchval(
            "DELETE FROM workflow_runs WHERE id = $1 RETURNING session_id", run.run_id)
        removed += 1
        if session is not None:
            removed += int((await connection.execute(
                "DELETE FROM sessions s WHERE s.id = $1 AND NOT EXISTS "
                "(SELECT 1 FROM workflow_runs r WHERE r.session_id = s.id)", session)).split()[-1])
        log.info("pruned run %s (%d events)", run.run_id, run.events)
    return removed


_QUARANTINE_SLICE = """
DELETE FROM quarantine WHERE id = ANY(ARRAY(
    SELECT id FROM quarantine WHERE last_seen < now() - $1::interval LIMIT $2))
"""
_QUARANTINE_COUNT = "SELECT count(*) FROM quarantine WHERE last_seen < now() - $1::interval"


async def prune_quarantine(connection: asyncpg.Connection, older_than: timedelta,
                           batch_size: int, *, dry_run: bool = False) -> int:
    """Remove quarantined inputs last seen more than ``older_than`` ago; returns how many
    (with ``dry_run``, how many would go)."""
    if dry_run:
        return int(await connection.fetchval(_QUARANTINE_COUNT, older_than))
    removed = 0
    while True:
        count = int((await connection.execute(_QUARANTINE_SLICE, older_than, batch_size))
                    .split()[-1])
        removed += count
        if count < batch_size:
            return removed


_UNIT_SECONDS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
MAX_AGE = timedelta(days=36_525)  # a century: older cut-offs overflow dates


def parse_age(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m`` or ``45s``: at most a century."""
    number, unit = text[:-1], text[-1:]
    if unit not in _UNIT_SECONDS or not number.isdigit():
        raise ValueError(f"age {text!r} is not a number followed by d, h, m or s (e.g. 30d)")
    seconds = int(number) * _UNIT_SECONDS[unit]
    if seconds > MAX_AGE.total_seconds():
        raise ValueError(f"age {text!r} is more than a century (at most {MAX_AGE.days}d)")
    return timedelta(seconds=seconds)
