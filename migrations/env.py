"""Alembic environment: runs migrations over asyncpg, one migrator at a time.

The database URL comes from the collector (``config.attributes["dsn"]``) or, when alembic is run
by hand, from ``CMBAGENT_DATABASE_URL``.
"""

from __future__ import annotations

import asyncio
import os

import asyncpg

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

# Any constant shared by every collector: several starting at once migrate one after another.
MIGRATION_LOCK = 0x636D6261  # "cmba"


def _dsn() -> str:
    dsn = context.config.attributes.get("dsn") or os.environ.get("CMBAGENT_DATABASE_URL", "")
    if not dsn:
        raise SystemExit("no database: pass --dsn or set CMBAGENT_DATABASE_URL")
    return dsn


def _migrate(connection: Connection) -> None:
    # Session-level: released when the connection closes, whatever happens.
    connection.execute(text(f"SELECT pg_advisory_lock({MIGRATION_LOCK})"))
    connection.commit()
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


async def _run() -> None:
    dsn = _dsn()
    # asyncpg reads the DSN itself, exactly as the collector's pool does (sslmode, host=...).
    engine = create_async_engine("postgresql+asyncpg://", async_creator=lambda: asyncpg.connect(dsn))
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_migrate)
            await connection.commit()
    finally:
        await engine.dispose()


asyncio.run(_run())
