"""Alembic environment: runs migrations over asyncpg, one migrator at a time, in our own schema.

The database URL and the schema come from the collector (``config.attributes``) or, when alembic
is run by hand, from the collector's environment variables. The schema is created if missing and
is the whole ``search_path`` of the migrations, so they create and alter our tables only, never
other applications' tables of the same names in ``public`` (CMBAgent's own, for one).
"""

from __future__ import annotations

import asyncio

import asyncpg

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

# Any constant shared by every collector: several starting at once migrate one after another.
MIGRATION_LOCK = 0x636D6261  # "cmba"


def _target() -> tuple[str, str]:
    """The DSN and the schema to migrate."""
    attributes = context.config.attributes
    if attributes.get("dsn"):
        return attributes["dsn"], attributes["schema"]
    from collector.settings import Settings

    settings = Settings.from_env()
    if not settings.dsn:
        raise SystemExit("no database: pass --dsn or set CMBAGENT_TRACKING_DATABASE_URL")
    return settings.dsn, settings.schema


def _adopt_version_table(connection: Connection, schema: str) -> None:
    """A database migrated before our tables had a schema of their own keeps ``alembic_version``
    in ``public``: when it names one of our revisions, it moves here (migration 0002 moves the
    tables); another application's ``alembic_version`` is left alone."""
    if schema == "public" or connection.execute(
            text("SELECT to_regclass(:name)"), {"name": f"{schema}.alembic_version"}).scalar():
        return
    if not connection.execute(text("SELECT to_regclass('public.alembic_version')")).scalar():
        return
    versions = connection.execute(text("SELECT version_num FROM public.alembic_version")).scalars()
    ours = {script.revision for script in context.script.walk_revisions()}
    if set(versions) & ours:
        connection.execute(text(f'ALTER TABLE public.alembic_version SET SCHEMA "{schema}"'))


def _migrate(connection: Connection, schema: str) -> None:
    # Session-level: released when the connection closes, whatever happens.
    connection.execute(text(f"SELECT pg_advisory_lock({MIGRATION_LOCK})"))
    # Checked first: CREATE SCHEMA IF NOT EXISTS needs the right to create even when it exists.
    if not connection.execute(text("SELECT to_regnamespace(:s)"), {"s": f'"{schema}"'}).scalar():
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    _adopt_version_table(connection, schema)
    connection.execute(text(f'SET search_path TO "{schema}"'))
    connection.commit()
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True,
                      version_table_schema=schema)
    with context.begin_transaction():
        context.run_migrations()


async def _run() -> None:
    dsn, schema = _target()
    # asyncpg reads the DSN itself, exactly as the collector's pool does (sslmode, host=...).
    engine = create_async_engine("postgresql+asyncpg://", async_creator=lambda: asyncpg.connect(dsn))
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_migrate, schema)
            await connection.commit()
    finally:
        await engine.dispose()


asyncio.run(_run())
