"""The database side: an asyncpg pool, one transaction per batch, COPY into staging tables.

Error families decide what happens to a batch:

- the server refused the *data* (SQLSTATE classes 22, 23, 54): the batch is split until the one
  row it refuses is found, and that row is quarantined; the rest is stored;
- anything else (connection lost, server restarting, out of resources): :meth:`Store.write`
  raises, nothing is acknowledged, and the daemon retries the same batch.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from .pipeline import Decoded, Quarantined
from .schema import server_settings
from .settings import DEFAULT_SCHEMA
from .tables import RUNS, WRITE_ORDER, Row, Table

log = logging.getLogger(__name__)

DATA_ERRORS = ("22", "23", "54")  # data exception, integrity, program limit (e.g. row too big)
QUARANTINE_PAYLOAD_BYTES = 64 * 1024

_QUARANTINE_SQL = """
INSERT INTO quarantine (digest, reason, detail, sender, payload, payload_size)
SELECT * FROM unnest($1::bytea[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::int[])
ON CONFLICT (digest) DO UPDATE SET times_seen = quarantine.times_seen + 1, last_seen = now()
"""
_SESSION_PLACEHOLDERS_SQL = "INSERT INTO sessions (id) SELECT unnest($1::uuid[]) ON CONFLICT DO NOTHING"
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

    def add(self, other: WriteResult) -> None:
        self.inserted.update(other.inserted)
        self.merged.update(other.merged)
        self.quarantined.update(other.quarantined)


def is_data_error(exc: BaseException) -> bool:
    return isinstance(exc, asyncpg.PostgresError) and (exc.sqlstate or "")[:2] in DATA_ERRORS


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
        """Store the frames in one transaction (bisecting around rows the server refuses)."""
        try:
            return await self._write_once(frames)
        except asyncpg.PostgresError as exc:
            if not is_data_error(exc):
                raise
            return await self._write_split(frames, exc)

    async def _write_split(self, frames: list[Decoded], exc: asyncpg.PostgresError) -> WriteResult:
        pieces = _split(frames)
        if pieces is None:  # one row, and the server refuses it
            frame = frames[0]
            table, row = frame.rows[0]
            reason = f"db_{exc.sqlstate}"
            log.warning("the database refused a %s row (%s: %s); it is quarantined",
                        table.name, exc.sqlstate, exc)
            refused = Quarantined(reason, f"{table.name}: {exc}"[:2000],
                                  repr(row).encode(errors="replace"), frame.sender)
            return await self._write_once(
                [Decoded(frame.identity, frame.batch_id, [], [*frame.quarantined, refused])])
        result = WriteResult()
        for piece in pieces:
            result.add(await self.write(piece))
        return result

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
                    inserted, total = await _upsert(connection, table, table_rows)
                    result.inserted[table.name] += inserted
                    result.merged[table.name] += total - inserted
            if quarantined:
                await _quarantine(connection, quarantined)
        result.quarantined.update(q.reason for q in quarantined)
        return result

    async def schema_revision(self) -> str | None:
        """The alembic revision the database is at (``None`` before the first migration)."""
        async with self.pool.acquire() as connection:
            if await connection.fetchval("SELECT to_regclass('alembic_version')") is None:
                return None
            return await connection.fetchval("SELECT version_num FROM alembic_version")


async def _prepare_connection(connection: asyncpg.Connection) -> None:
    for table in WRITE_ORDER:
        await connection.execute(table.create_stage_sql())


def _split(frames: list[Decoded]) -> list[list[Decoded]] | None:
    """Halve a batch: by frames, then a frame's rows; ``None`` when it is a single row."""
    if len(frames) > 1:
        middle = len(frames) // 2
        return [frames[:middle], frames[middle:]]
    frame = frames[0]
    if len(frame.rows) <= 1:
        return None
    middle = len(frame.rows) // 2
    return [[Decoded(frame.identity, frame.batch_id, frame.rows[:middle], frame.quarantined)],
            [Decoded(frame.identity, frame.batch_id, frame.rows[middle:], [])]]


def _merged_rows(frames: list[Decoded]) -> dict[Table, dict[tuple[Any, ...], Row]]:
    """Rows per table, the pieces of one row merged by its table's rules, in arrival order."""
    rows: dict[Table, dict[tuple[Any, ...], Row]] = {}
    for frame in frames:
        for table, row in frame.rows:
            by_key = rows.setdefault(table, {})
            key = tuple(row[k] for k in table.key)
            old = by_key.get(key)
            by_key[key] = row if old is None else table.merge(old, row)
    return rows


def _run_of(table: Table, row: Row) -> Any:
    """The run a row belongs to (``None`` for sessions)."""
    return row["id"] if table is RUNS else row.get("run_id")


async def _resolve_sessions(connection: asyncpg.Connection,
                            rows: dict[Table, dict[tuple[Any, ...], Row]],
                            quarantined: list[Quarantined]) -> dict[Any, Any]:
    """Each referenced run's session, from the batch or else the database; returns run → session.

    Rows of a run that is not stored and comes with no session are refused: a worker given
    only ``CMBAGENT_RUN_ID`` before its parent's run reached the database.
    """
    sessions: dict[Any, Any] = {}
    for table, table_rows in rows.items():
        for row in table_rows.values():
            if row.get("session_id"):
                sessions.setdefault(_run_of(table, row), row["session_id"])
    referenced = {_run_of(t, row) for t, table_rows in rows.items()
                  for row in table_rows.values()} - {None}
    missing = referenced - sessions.keys()
    if missing:
        for record in await connection.fetch(_RUN_SESSIONS_SQL, list(missing)):
            sessions[record["id"]] = record["session_id"]
    unknown = referenced - sessions.keys()
    for table, table_rows in rows.items():
        for key, row in list(table_rows.items()):
            run = _run_of(table, row)
            if run in unknown:
                del table_rows[key]
                quarantined.append(Quarantined(
                    "unknown_session", f"{table.name} row of run {run}: the run is not stored "
                    "and no session was given (set CMBAGENT_SESSION_ID with CMBAGENT_RUN_ID)",
                    repr(row).encode(errors="replace")))
            elif "session_id" in row and row["session_id"] is None:
                row["session_id"] = sessions[run]
    return sessions


async def _write_placeholders(connection: asyncpg.Connection, sessions: dict[Any, Any]) -> None:
    """Sessions and runs that rows point at before (or without) their own records."""
    if sessions:
        await connection.execute(_SESSION_PLACEHOLDERS_SQL, list(set(sessions.values())))
        await connection.execute(_RUN_PLACEHOLDERS_SQL, list(sessions), list(sessions.values()))


async def _upsert(connection: asyncpg.Connection, table: Table,
                  rows: dict[tuple[Any, ...], Row]) -> tuple[int, int]:
    records = [table.as_tuple(row, order) for order, row in enumerate(rows.values())]
    await connection.copy_records_to_table(
        table.stage, records=records, columns=[*(c.name for c in table.columns), "ord"])
    counts = await connection.fetchrow(
        f"WITH written AS ({table.upsert_sql()}) "
        "SELECT count(*) FILTER (WHERE inserted) AS inserted, count(*) AS total FROM written")
    assert counts is not None
    return counts["inserted"], counts["total"]


async def _quarantine(connection: asyncpg.Connection, items: list[Quarantined]) -> None:
    unique: dict[bytes, Quarantined] = {}
    for item in items:
        unique.setdefault(hashlib.sha256(f"{item.reason}\0".encode() + item.payload).digest(), item)
    await connection.execute(
        _QUARANTINE_SQL, list(unique), [q.reason for q in unique.values()],
        [q.detail[:2000] for q in unique.values()], [q.sender for q in unique.values()],
        [q.payload[:QUARANTINE_PAYLOAD_BYTES] for q in unique.values()],
        [len(q.payload) for q in unique.values()])
