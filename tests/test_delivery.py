"""Delivery guarantees end to end: agent processes → ZeroMQ → collector process → PostgreSQL."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from .helpers.support import CollectorProcess, agent, fetch, fetchval, finish, wait_for


def _run_id(output: str) -> uuid.UUID:
    line = next(line for line in output.splitlines() if line.startswith("run="))
    return uuid.UUID(hex=line.split("=", 1)[1])


def _messages(dsn: str, run: uuid.UUID) -> list[dict]:
    return [dict(r) for r in fetch(
        dsn, "SELECT id, inputs, meta, agent_name, status, parent_event_id, depth "
        "FROM execution_events WHERE run_id = $1 AND event_type = 'message'", run)]


def _assert_exactly_once(dsn: str, run: uuid.UUID, count: int) -> list[dict]:
    rows = _messages(dsn, run)
    numbers = sorted(json.loads(r["inputs"])["i"] for r in rows)
    assert numbers == list(range(count)), f"{len(numbers)} stored, {len(set(numbers))} distinct"
    return rows


def test_two_agent_processes_each_event_once_with_fields_intact(
        collector: CollectorProcess, agent_env: dict[str, str]) -> None:
    env = {**agent_env, "CMBAGENT_COLLECTOR_URL": collector.url}
    first, second = (agent(env, "emit", "3000", wait=False) for _ in range(2))
    outputs = [finish(p) for p in (first, second)]
    assert all("flushed=True" in out for out in outputs), outputs
    runs = [_run_id(out) for out in outputs]

    for run in runs:
        rows = _assert_exactly_once(collector.dsn, run, 3000)
        span = fetch(collector.dsn, "SELECT id, status, duration_ms, inputs FROM execution_events "
                     "WHERE run_id = $1 AND event_type = 'agent_call'", run)
        assert len(span) == 1 and span[0]["status"] == "completed"
        assert span[0]["duration_ms"] > 0 and json.loads(span[0]["inputs"]) == {"task": "emit"}
        row = rows[0]
        inputs = json.loads(row["inputs"])
        assert inputs["text"] == "ünïcødé ✓"
        assert row["agent_name"] == f"agent-{inputs['pid']}"
        assert json.loads(row["meta"])["n"] == inputs["i"]
        assert {r["parent_event_id"] for r in rows} == {span[0]["id"]}
        assert {r["depth"] for r in rows} == {1} and {r["status"] for r in rows} == {"completed"}
        run_row = fetch(collector.dsn, "SELECT status, task_description, completed_at "
                        "FROM workflow_runs WHERE id = $1", run)[0]
        assert run_row["status"] == "completed" and run_row["task_description"] == "emit"
        assert run_row["completed_at"] is not None
    assert fetchval(collector.dsn, "SELECT count(DISTINCT session_id) FROM workflow_runs") == 2


def test_collector_killed_mid_stream_loses_and_duplicates_nothing(
        collector: CollectorProcess, agent_env: dict[str, str]) -> None:
    env = {**agent_env, "CMBAGENT_COLLECTOR_URL": collector.url, "CMBAGENT_ACK_TIMEOUT": "2"}
    streaming = agent(env, "emit", "20000", "0.01", "60", wait=False)
    wait_for(lambda: fetchval(collector.dsn, "SELECT count(*) FROM execution_events") > 2000)
    collector.kill()  # SIGKILL: whatever it held uncommitted is gone
    time.sleep(0.5)
    collector.start()
    output = finish(streaming)
    assert "flushed=True" in output, output
    _assert_exactly_once(collector.dsn, _run_id(output), 20000)


def test_postgres_restarted_mid_stream_loses_and_duplicates_nothing(
        own_postgres: Any, tmp_path: Path, agent_env: dict[str, str]) -> None:
    dsn = own_postgres.get_uri()
    collector = CollectorProcess(dsn, tmp_path).start()
    env = {**agent_env, "CMBAGENT_COLLECTOR_URL": collector.url}
    streaming = agent(env, "emit", "20000", "0.01", "60", wait=False)
    wait_for(lambda: fetchval(dsn, "SELECT count(*) FROM execution_events") > 2000)
    own_postgres._stop()
    time.sleep(1.0)
    own_postgres.start()
    output = finish(streaming)
    assert "flushed=True" in output, output
    _assert_exactly_once(dsn, _run_id(output), 20000)
    assert "retrying" in collector.log_text()  # it did see the database go away
    assert collector.stop() == 0


def test_collector_down_at_start_then_everything_arrives(
        database: str, tmp_path: Path, agent_env: dict[str, str]) -> None:
    collector = CollectorProcess(database, tmp_path, extra=("--no-migrate",))
    env = {**agent_env, "CMBAGENT_COLLECTOR_URL": collector.url}
    running = agent(env, "emit", "5000", "0", "60", wait=False)
    assert running.stdout is not None
    # The agent emits everything with no collector anywhere: nothing blocks it.
    lines = [running.stdout.readline() for _ in range(2)]
    assert lines[1].strip() == "emitted", lines
    time.sleep(1.0)
    collector.start()
    output = "".join(lines) + finish(running)
    assert "flushed=True" in output, output
    _assert_exactly_once(database, _run_id(output), 5000)
    collector.kill()


def test_exit_while_collector_down_is_bounded_and_spooled_events_arrive_later(
        database: str, tmp_path: Path, agent_env: dict[str, str]) -> None:
    collector = CollectorProcess(database, tmp_path, extra=("--no-migrate",))
    env = {**agent_env, "CMBAGENT_COLLECTOR_URL": collector.url, "CMBAGENT_EXIT_TIMEOUT": "1"}
    started = time.monotonic()
    output = agent(env, "exit_now", "3000").stdout
    lifetime = time.monotonic() - started
    assert "delivered=False" in output
    seconds = float(output.split("shutdown_seconds=")[1].split()[0])
    assert seconds <= 1.5, output  # the bound, plus writing the spool
    assert lifetime < 15  # the atexit hook found nothing left to wait for
    spooled = list(Path(agent_env["CMBAGENT_SPOOL_DIR"]).rglob("*.frame"))
    assert spooled, "nothing was spooled"

    collector.start()
    # The next agent process on this machine adopts the spool and delivers it.
    later = agent(env, "emit", "10").stdout
    assert "flushed=True" in later
    wait_for(lambda: len(_messages(database, _run_id(output))) == 3000)
    _assert_exactly_once(database, _run_id(output), 3000)
    assert fetchval(database, "SELECT status FROM workflow_runs WHERE id = $1",
                    _run_id(output)) == "completed"
    wait_for(lambda: not list(Path(agent_env["CMBAGENT_SPOOL_DIR"]).rglob("*.frame")))
    collector.kill()


def test_forked_child_gets_a_fresh_sender(collector: CollectorProcess,
                                          agent_env: dict[str, str]) -> None:
    env = {**agent_env, "CMBAGENT_COLLECTOR_URL": collector.url}
    output = agent(env, "forks", "500").stdout
    assert "child_status=0" in output and "flushed=True" in output, output
    rows = fetch(collector.dsn, "SELECT inputs->>'who' AS who, count(*) AS n, "
                 "count(DISTINCT id) AS ids FROM execution_events WHERE run_id = $1 "
                 "GROUP BY 1 ORDER BY 1", _run_id(output))
    assert [(r["who"], r["n"], r["ids"]) for r in rows] == [
        ("child", 500, 500), ("parent", 500, 500), ("parent-before", 1, 1)]


def test_capture_off_starts_nothing(agent_env: dict[str, str]) -> None:
    output = agent({**agent_env, "CMBAGENT_COLLECTOR_URL": ""}, "disabled").stdout
    assert "enabled=False threads=1 zmq=False" in output, output
    assert "flush=True" in output
    assert not Path(agent_env["CMBAGENT_SPOOL_DIR"]).exists()


def test_drops_past_the_spool_bound_are_counted_in_the_stored_run(
        database: str, tmp_path: Path, agent_env: dict[str, str]) -> None:
    collector = CollectorProcess(database, tmp_path, extra=("--no-migrate",))
    env = {**agent_env, "CMBAGENT_COLLECTOR_URL": collector.url, "CMBAGENT_EXIT_TIMEOUT": "0.5",
           "CMBAGENT_QUEUE_SIZE": "100", "CMBAGENT_SPOOL_MAX_BYTES": "200000"}
    output = agent(env, "exit_now", "20000").stdout
    run = _run_id(output)
    collector.start()
    agent(env, "emit", "1")  # adopts and delivers the spool
    wait_for(lambda: fetch(database, "SELECT 1 FROM workflow_runs WHERE id = $1", run))
    messages = len(_messages(database, run))
    run_row = fetch(database, "SELECT started_at, completed_at FROM workflow_runs WHERE id = $1",
                    run)[0]
    dropped = wait_for(lambda: fetchval(
        database, "SELECT coalesce(sum(count), 0) FROM dropped_events WHERE run_id = $1", run))
    assert 0 < messages < 20000
    # Every record the program emitted (its run's start and end, 20,000 messages) is either
    # stored or counted as dropped.
    stored = messages + (run_row["started_at"] is not None) + (run_row["completed_at"] is not None)
    assert stored + dropped == 20002, (messages, dict(run_row), dropped)
    collector.kill()


@pytest.mark.parametrize("bad", ["garbage", "bad_records"])
def test_bad_input_is_quarantined_and_good_events_are_stored(
        collector: CollectorProcess, bad: str) -> None:
    from .helpers.frames import exercise_bad_input

    exercise_bad_input(collector, bad)
