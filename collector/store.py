"""The database side: an asyncpg pool, one transaction per batch, COPY into staging tables.

Error families decide what happens to a batch:

- the server refused the *data* (SQLSTATE classes 22, 23, 54), or encoding it here failed (a
  value the pipeline's checks let through by mistake): the batch is split in halves until the
  rows it refuses are found, and those are quarantined; the rest is stored. Splitting has a
  budget of transactions that grows with log(rows): once it is spent, a piece that still fails
  is quarantined whole, so a frame refused row by row costs tens of transactions, not
  thousands;
- anything else (connection lost, server restarting, out of resources): :meth:`Store.write`
  raises, nothing is acknowledged, and the daemon retries the same batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from .pipeline import QUARANTINE_PAYLOAD_BYTES, Decoded, Quarantined, Refusals
from .schema import server_settings
from .settings import DEFAULT_SCHEMA
from .tables import EVENTS, RUNS, SESSIONS, WRITE_ORDER, Row, Table, clean_text

log = logging.getLogger(__name__)

DATA_ERRORS = ("22", "23", "54")  # data exception, integrity, program limit (e.g. row too big)
#: Errors raised while encoding rows here: they belong to the data, never to the connection.
LOCAL_DATA_ERRORS = (asyncpg.DataError, ValueError, TypeError, OverflowError, RecursionError)
SPLIT_BUDGET_PER_LEVEL = 4  # transactions per halving level (log2 of the rows) to find bad rows
UNIQUE_VIOLATION = "23505"
#: Microseconds from the Unix epoch to PostgreSQL's (2000-01-01), for the timestamptz codec.
_PG_EPOCH_US = 946_684_800_000_000

_QUARANTINE_SQL = """
INSERT INTO quarantine (digest, reason, detail, sender, payload, payload_size)
SELECT * FROM unnest($1::bytea[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::int[])
ON CONFLICT (digest) DO UPDATE SET times_seen = quarantine.times_seen + 1, last_seen = now()
"""
_SESSION_PLACEHOLDERS_SQL = (
    "INSERT INTO sessions (id) SELECT unnest($1::uuid[]) ON CONFLICT DO NOTHING")
_RUN_PLACEHOLDERS_SQL = """
INSERT INTO workflow_runs (id, session_id) SELECT * FROM unnest($1::uuid[], $2::uuid[])
ON CONFLICT DO NOTHING
"""
_RUN_SESSIONS_SQL = "SELECT id, session_id FROM workflow_runs WHERE id = ANY($1::uuid[])"


@dataclass
class WriteResult:
    inserted: Counter[str] = field(default_factory=Counter)
    merged: Counter[str] = field(default_factory=Counter)
    quarantined: Counter[str] = field(default_factory=Counter)
    transactions: int = 0  # attempted, committed or not

    def add(self, other: WriteResult) -> None:
        self.inserted.update(other.inserted)
        self.merged.update(other.merged)
        self.quarantined.update(other.quarantined)
        self.transactions += other.transactions


def is_data_error(exc: BaseException) -> bool:
    if isinstance(exc, asyncpg.PostgresError):
        return (exc.sqlstate or "")[:2] in DATA_ERRORS
    return isinstance(exc, LOCAL_DATA_ERRORS)


class Store:
    """Writes decoded frames; the only holder of database connections."""

    def __init__(self, dsn: str, pool_size: int = 4, schema: str = DEFAULT_SCHEMA) -> None:
        self._dsn = dsn
        self._pool_size = pool_size
        self._schema = schema
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(
            self._dsn, min_size=1, max_size=self._pool_size, init=_prepare_connection,
            command_timeout=60, server_settings=server_settings(self._schema),
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the store is not open: call `await store.open()` first")
        return self._pool

    async def write(self, frames: list[Decoded]) -> WriteResult:
        """Store the frames in one transaction (splitting around rows the server refuses)."""
        result = WriteResult(transactions=1)
        try:
            result.add(await self._write_once(frames))
            return result
        except Exception as exc:
            if not is_data_error(exc):
                raise
            log.warning("a batch of %d rows was refused (%s: %s); finding the rows",
                        _row_count(frames), type(exc).__name__, exc)
            refused = await self._write_around_refusals(frames, exc, result)
        quarantined = [q for f in frames for q in f.quarantined] + refused
        result.transactions += 1
        result.add(await self._write_once([Decoded(b"", None, [], quarantined)]))
        return result

    async def _write_around_refusals(self, frames: list[Decoded], error: Exception,
                                     result: WriteResult) -> list[Quarantined]:
        """Store every piece the server takes, halving the ones it refuses while the budget
        lasts; what it still refuses is returned, to be quarantined."""
        budget = SPLIT_BUDGET_PER_LEVEL * max(1, _row_count(frames).bit_length())
        refused: list[Quarantined] = []
        pending = [(frames, error)]  # pieces known to fail, with their error
        while pending:
            piece, error = pending.pop()
            if _row_count(piece) == 1 or budget < 2:
                refused.extend(_refusal(piece, error))
                continue
            for half in _halves(piece):
                budget -= 1
                result.transactions += 1
                try:
                    result.add(await self._write_once(half))
                except Exception as exc:
                    if not is_data_error(exc):
                        raise
                    pending.append((half, exc))
        return refused

    async def _write_once(self, frames: list[Decoded]) -> WriteResult:
        result = WriteResult()
        quarantined = [q for f in frames for q in f.quarantined]
        rows = _merged_rows(frames)
        async with self.pool.acquire() as connection, connection.transaction():
            sessions = await _resolve_sessions(connection, rows, quarantined)
            await _write_placeholders(connection, sessions)
            for table in WRITE_ORDER:
                table_rows = rows.get(table)
                if table_rows:
                    inserted, total = await (
                        _write_events(connection, list(table_rows.values())) if table is EVENTS
                        else _upsert(connection, table, list(table_rows.values())))
                    result.inserted[table.name] += inserted
                    result.merged[table.name] += total - inserted
            if quarantined:
                await _quarantine(connection, quarantined)
        for item in quarantined:
            result.quarantined[item.reason] += item.count
        return result

    async def schema_revision(self) -> str | None:
        """The alembic revision the database is at (``None`` before the first migration)."""
        async with self.pool.acquire() as connection:
            if await connection.fetchval("SELECT to_regclass('alembic_version')") is None:
                return None
            revision: str | None = await connection.fetchval(
                "SELECT version_num FROM alembic_version")
            return revision


async def _prepare_connection(connection: asyncpg.Connection) -> None:
    # Rows hold ids as their 16 bytes and times as integer microseconds since the epoch: these
    # codecs hand both to PostgreSQL's binary format as they are, with no Python object made
    # per value (uuid.UUID, datetime).
    await connection.set_type_codec("uuid", schema="pg_catalog", encoder=bytes, decoder=bytes,
                                    format="binary")
    await connection.set_type_codec(
        "timestamptz", schema="pg_catalog", format="tuple",
        encoder=lambda us: (us - _PG_EPOCH_US,), decoder=lambda pg: pg[0] + _PG_EPOCH_US)
    for table in WRITE_ORDER:
        await connection.execute(table.create_stage_sql)


def _row_count(frames: list[Decoded]) -> int:
    return sum(len(f.rows) for f in frames)


def _halves(frames: list[Decoded]) -> tuple[list[Decoded], list[Decoded]]:
    """The rows in two pieces of half each (a frame cut in two if need be), without the
    frames' quarantined inputs: those are written once, after the rows."""
    remaining = _row_count(frames) // 2
    first: list[Decoded] = []
    second: list[Decoded] = []
    for frame in frames:
        cut = min(len(frame.rows), remaining)
        remaining -= cut
        if cut:
            first.append(dataclasses.replace(frame, rows=frame.rows[:cut], quarantined=[]))
        if cut < len(frame.rows):
            second.append(dataclasses.replace(frame, rows=frame.rows[cut:], quarantined=[]))
    return first, second


def _refusal(piece: list[Decoded], error: Exception) -> list[Quarantined]:
    """A piece the server refuses, quarantined: its one row, or its rows counted per frame."""
    reason = f"db_{error.sqlstate}" if isinstance(error, asyncpg.PostgresError) else "unencodable"
    detail = f"{type(error).__name__}: {error}"[:2000]
    log.warning("quarantined %d rows the database refuses (%s)", _row_count(piece), detail)
    refusals = []
    for frame in piece:
        table, row = frame.rows[0]
        count = len(frame.rows)
        what = (f"{table.name} row" if count == 1 else f"{count} rows refused together (the "
                "first is kept; the search for the bad ones ran out of budget)")
        refusals.append(Quarantined(reason, f"{what}: {detail}", repr(table.as_dict(row)).encode(
            errors="replace")[:QUARANTINE_PAYLOAD_BYTES], frame.sender, count))
    return refusals


Merged = dict[Table, dict[Any, Row]]


def _merged_rows(frames: list[Decoded]) -> Merged:
    """Rows per table, the pieces of one row merged by its table's rules, in arrival order."""
    rows: Merged = {}
    for frame in frames:
        for table, row in frame.rows:
            by_key = rows.get(table)
            if by_key is None:
                by_key = rows[table] = {}
            key = table.key_of(row)
            old = by_key.get(key)
            by_key[key] = row if old is None else table.merge(old, row)
    return rows


def _places(table: Table) -> tuple[int | None, int | None]:
    """Where a row of the table holds its run (``None`` for sessions) and its session."""
    run = "id" if table is RUNS else None if table is SESSIONS else "run_id"
    return (None if run is None else table.position[run]), table.position.get("session_id")


async def _resolve_sessions(connection: asyncpg.Connection, rows: Merged,
                            quarantined: list[Quarantined]) -> dict[Any, Any]:
    """Each referenced run's session, from the batch or else the database; returns run → session.

    Rows of a run that is not stored and comes with no session are refused: a worker given
    only ``CMBAGENT_RUN_ID`` before its parent's run reached the database.
    """
    sessions: dict[Any, Any] = {}
    referenced: set[Any] = set()
    for table, table_rows in rows.items():
        run_at, session_at = _places(table)
        if run_at is None:
            continue
        runs = {row[run_at] for row in table_rows.values()}
        referenced |= runs
        if session_at is not None and len(sessions) < len(referenced):
            for row in table_rows.values():
                if row[session_at] and row[run_at] not in sessions:
                    sessions[row[run_at]] = row[session_at]
    missing = referenced - sessions.keys()
    if missing:
        for record in await connection.fetch(_RUN_SESSIONS_SQL, list(missing)):
            sessions[record["id"]] = record["session_id"]
    unknown = referenced - sessions.keys()
    refusals = Refusals(None)
    for table, table_rows in rows.items():
        run_at, session_at = _places(table)
        if run_at is None:
            continue
        for key, row in list(table_rows.items()):
            run = row[run_at]
            if run in unknown:
                del table_rows[key]
                refusals.add("unknown_session", f"{table.name} row of run "
                             f"{uuid.UUID(bytes=run)}: the run is not stored and no session was "
                             "given (set CMBAGENT_SESSION_ID with CMBAGENT_RUN_ID)",
                             table.as_dict(row))
            elif session_at is not None and row[session_at] is None:
                table_rows[key] = (*row[:session_at], sessions[run], *row[session_at + 1:])
    quarantined.extend(refusals.items())
    return sessions


async def _write_placeholders(connection: asyncpg.Connection, sessions: dict[Any, Any]) -> None:
    """Sessions and runs that rows point at before (or without) their own records."""
    if sessions:
        await connection.execute(_SESSION_PLACEHOLDERS_SQL, list(set(sessions.values())))
        await connection.execute(_RUN_PLACEHOLDERS_SQL, list(sessions), list(sessions.values()))


async def _upsert(connection: asyncpg.Connection, table: Table,
                  rows: list[Row]) -> tuple[int, int]:
    """Rows merged into the table through its staging table; (rows inserted, rows written)."""
    fill = table.with_defaults
    await connection.copy_records_to_table(
        table.stage, records=[(*fill(row), order) for order, row in enumerate(rows)],
        columns=table.stage_columns)
    counts = await connection.fetchrow(table.upsert_sql)
    assert counts is not None
    return counts["inserted"], counts["total"]


async def _write_events(connection: asyncpg.Connection, rows: list[Row]) -> tuple[int, int]:
    """Events copied straight into their table, and merged through staging only when they
    must be.

    An event is written once, or as a span's start and end. The end of a span begun in an
    earlier batch (an end without a start) merges into the stored row; every other event is
    new unless its frame is a resend after a lost ack. So the new ones are copied in directly,
    inside a savepoint, and only if one of them is already stored (a unique violation) is the
    savepoint rolled back and every event merged, as for the other tables.
    """
    started, completed = EVENTS.position["started_at"], EVENTS.position["completed_at"]
    ends = [row for row in rows if row[started] is None and row[completed] is not None]
    if len(ends) == len(rows):
        return await _upsert(connection, EVENTS, rows)
    fresh = [row for row in rows if not (row[started] is None and row[completed] is not None)]
    try:
        async with connection.transaction():  # a savepoint
            fill = EVENTS.with_defaults
            await connection.copy_records_to_table(
                EVENTS.name, records=[fill(row) for row in fresh], columns=EVENTS.column_names)
    except asyncpg.UniqueViolationError:
        return await _upsert(connection, EVENTS, rows)
    if not ends:
        return len(fresh), len(fresh)
    inserted, total = await _upsert(connection, EVENTS, ends)
    return len(fresh) + inserted, len(fresh) + total


async def _quarantine(connection: asyncpg.Connection, items: list[Quarantined]) -> None:
    unique: dict[bytes, Quarantined] = {}
    for item in items:
        key = f"{item.reason}\0{item.detail if item.count > 1 else ''}\0".encode()
        unique.setdefault(hashlib.sha256(key + item.payload).digest(), item)
    await connection.execute(
        _QUARANTINE_SQL, list(unique), [q.reason for q in unique.values()],
        [clean_text(q.detail)[:2000] for q in unique.values()],
        [q.sender for q in unique.values()], [q.payload for q in unique.values()],
        [len(q.payload) for q in unique.values()])
