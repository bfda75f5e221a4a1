"""Where our tables live (a PostgreSQL schema of their own) and the alembic migrations
(``migrations/`` in the repository) that make them.

Every connection of ours sets ``search_path`` to that schema only, so unqualified names mean our
tables, never CMBAgent's tables of the same names in ``public``.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config

from .settings import DEFAULT_SCHEMA


def server_settings(schema: str = DEFAULT_SCHEMA) -> dict[str, str]:
    """asyncpg ``server_settings`` for a connection that works on the tables in ``schema``."""
    return {"search_path": schema}


async def connect(dsn: str, schema: str = DEFAULT_SCHEMA, **settings: str) -> asyncpg.Connection:
    """One connection to our tables (``settings``: more server settings)."""
    return await asyncpg.connect(dsn, server_settings={**server_settings(schema), **settings})


def _script_location() -> Path:
    installed = Path(__file__).with_name("migrations")  # a wheel maps migrations/ here
    return installed if installed.is_dir() else Path(__file__).parents[1] / "migrations"


def alembic_config(dsn: str, schema: str = DEFAULT_SCHEMA) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_script_location()))
    config.attributes["dsn"] = dsn
    config.attributes["schema"] = schema
    return config


def upgrade(dsn: str, revision: str = "head", schema: str = DEFAULT_SCHEMA) -> None:
    command.upgrade(alembic_config(dsn, schema), revision)


def downgrade(dsn: str, revision: str = "base", schema: str = DEFAULT_SCHEMA) -> None:
    command.downgrade(alembic_config(dsn, schema), revision)


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("")).get_current_head()
    assert head is not None
    return head
