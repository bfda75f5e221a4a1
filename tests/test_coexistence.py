"""Beside CMBAgent's own database layer: our tables in a schema of their own, the fork's tables of
the same names in ``public``, in one database, whichever came first."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import sys
import uuid
from datetime import datetime
from pathlib import Path
from types import ModuleType

import asyncpg
import pytest
from sqlalchemy import MetaData, func, select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from collector import schema
from collector.settings import Settings, SettingsError

from .helpers.support import CollectorProcess, agent, execute, fetch, fetchval

#: The vendored fork (VENDORED.md); CI has it at the same place beside the repository.
FORK = Path(os.environ.get("CMBAGENT_FORK_SOURCE",
                           Path(__file__).parents[2] / "shared" / "vendor" / "cmbagent-fork"))
SHARED_NAMES = {"sessions", "workflow_runs", "dag_nodes", "dag_edges", "execution_events",
                "cost_records"}


def _fork_models() -> tuple[MetaData, type, type]:
    """The fork's own SQLAlchemy models (``cmbagent/database/models.py``): its metadata, Session
    and WorkflowRun. Loaded alone, because importing the package pulls in AG2 and every LLM
    client."""
    database = FORK / "cmbagent" / "database"
    assert (database / "models.py").is_file(), (
        f"the CMBAgent fork is not at {FORK}: set CMBAGENT_FORK_SOURCE to its source tree")
    saved = {name: sys.modules.get(name) for name in
             ("cmbagent", "cmbagent.database", "cmbagent.database.base",
              "cmbagent.database.models")}
    try:
        for package in ("cmbagent", "cmbagent.database"):
            sys.modules[package] = ModuleType(package)
        for name in ("base", "models"):
            spec = importlib.util.spec_from_file_location(f"cmbagent.database.{name}",
                                                          database / f"{name}.py")
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        return module.Base.metadata, module.Session, module.WorkflowRun
    finally:  # the rest of the test session must not see a fake cmbagent
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


FORK_METADATA, FORK_SESSION, FORK_RUN = _fork_models()


def _fork(dsn: str, action: str) -> int:
    """What the fork's database layer does at start (``create_all``) and then (a session and a
    run through its ORM); returns how many runs its own ``workflow_runs`` holds."""

    async def run() -> int:
        engine = create_async_engine("postgresql+asyncpg://",
                                     async_creator=lambda: asyncpg.connect(dsn))
        try:
            async with engine.begin() as connection:
                await connection.run_sync(FORK_METADATA.create_all)
            if action == "write":
                # Naive times: asyncpg, unlike the fork's psycopg, refuses aware ones for its
                # TIMESTAMP columns.
                now = datetime.now()
                async with AsyncSession(engine) as session, session.begin():
                    fork_session = FORK_SESSION(name="fork session", created_at=now,
                                                last_active_at=now)
                    session.add(fork_session)
                    await session.flush()
                    session.add(FORK_RUN(session_id=fork_session.id, mode="one_shot",
                                         agent="engineer", model="gpt-4o"))
            async with AsyncSession(engine) as session:
                return int((await session.execute(select(func.count()).select_from(FORK_RUN)))
                           .scalar_one())
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _tables(dsn: str, namespace: str) -> set[str]:
    return {r["tablename"] for r in fetch(dsn, "SELECT tablename FROM pg_tables "
                                          "WHERE schemaname = $1", namespace)}


def _ours_work(dsn: str, tmp_path: Path, agent_env: dict[str, str]) -> None:
    """``serve`` (migrating at start, as it does by default) stores an agent's events."""
    collector = CollectorProcess(dsn, tmp_path / "collector").start()
    try:
        output = agent({**agent_env, "CMBAGENT_COLLECTOR_URL": collector.url}, "emit", "50").stdout
        assert "flushed=True" in output
        assert collector.stop() == 0, collector.log_text()
    finally:
        if collector.alive():
            collector.kill()
    assert fetchval(dsn, "SELECT count(*) FROM execution_events WHERE event_type = 'message'") \
        == 50
    assert fetchval(dsn, "SELECT version_num FROM alembic_version") == schema.head_revision()


@pytest.mark.parametrize("first", ["fork", "ours"])
def test_the_fork_and_the_collector_share_a_database(first: str, empty_database: str,
                                                     tmp_path: Path,
                                                     agent_env: dict[str, str]) -> None:
    if first == "fork":
        assert _fork(empty_database, "write") == 1
    _ours_work(empty_database, tmp_path, agent_env)
    assert _fork(empty_database, "write") == (2 if first == "fork" else 1)

    assert SHARED_NAMES <= _tables(empty_database, "public")  # the fork's, untouched
    assert "quarantine" not in _tables(empty_database, "public")
    assert SHARED_NAMES | {"quarantine", "alembic_version"} <= _tables(empty_database,
                                                                       "cmbagent_tracking")
    # Each side sees its own rows only: our sessions are uuids, the fork's are its text ids.
    assert fetchval(empty_database, "SELECT count(*) FROM sessions") == 1
    assert fetchval(empty_database, "SELECT count(*) FROM public.sessions "
                    "WHERE name = 'fork session'") == (2 if first == "fork" else 1)


def test_a_database_migrated_before_the_schema_moves_there_with_its_rows(
        empty_database: str, tmp_path: Path, agent_env: dict[str, str]) -> None:
    schema.upgrade(empty_database, "0001", schema="public")  # where 0001 used to put them
    kept = uuid.uuid4()
    execute(empty_database, f"INSERT INTO public.sessions (id, name) VALUES ('{kept}', 'old')")

    _ours_work(empty_database, tmp_path, agent_env)  # migrates to head at start
    assert _tables(empty_database, "public") == set()
    assert [r["name"] for r in fetch(empty_database, "SELECT name FROM sessions WHERE id = $1",
                                     kept)] == ["old"]
    assert fetchval(empty_database, "SELECT nextval('execution_order_seq')") > 50
    assert _fork(empty_database, "write") == 1  # and now the fork's create_all succeeds


def test_another_applications_alembic_version_in_public_is_left_alone(
        empty_database: str) -> None:
    execute(empty_database, "CREATE TABLE public.alembic_version (version_num text)",
            "INSERT INTO public.alembic_version VALUES ('f00dcafe')")
    schema.upgrade(empty_database)
    assert fetchval(empty_database, "SELECT version_num FROM public.alembic_version") \
        == "f00dcafe"
    assert fetchval(empty_database, "SELECT version_num FROM alembic_version") \
        == schema.head_revision()


def test_the_collectors_database_variable_and_the_old_name(monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture
                                                           ) -> None:
    monkeypatch.delenv("CMBAGENT_TRACKING_DATABASE_URL", raising=False)
    monkeypatch.setenv("CMBAGENT_DATABASE_URL", "postgresql://old/db")
    with caplog.at_level(logging.WARNING, logger="collector"):
        assert Settings.from_env().dsn == "postgresql://old/db"
    assert "CMBAGENT_DATABASE_URL is CMBAgent's own database variable; set " \
           "CMBAGENT_TRACKING_DATABASE_URL" in caplog.text
    caplog.clear()
    monkeypatch.setenv("CMBAGENT_TRACKING_DATABASE_URL", "postgresql://new/db")
    with caplog.at_level(logging.WARNING, logger="collector"):
        assert Settings.from_env().dsn == "postgresql://new/db"
    assert caplog.text == ""  # the new name wins, and CMBAgent may keep the old one for itself


def test_the_schema_is_configurable_and_checked(monkeypatch: pytest.MonkeyPatch,
                                                empty_database: str) -> None:
    monkeypatch.setenv("CMBAGENT_TRACKING_SCHEMA", "tracking_b")
    assert Settings.from_env().schema == "tracking_b"
    assert Settings().schema == "cmbagent_tracking"
    for bad in ("Tracking", "1st", "a;drop table x", ""):
        with pytest.raises(SettingsError, match="is not a plain PostgreSQL name"):
            Settings(schema=bad)
    schema.upgrade(empty_database, schema="tracking_b")
    assert "workflow_runs" in _tables(empty_database, "tracking_b")
    assert _tables(empty_database, "cmbagent_tracking") == set()
