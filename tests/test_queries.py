"""The read commands (``runs``, ``tree``, ``events``) as a user runs them, and their speed."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import uuid
from typing import Any

import asyncpg
import pytest

from collector import reads
from collector.schema import connect

from .helpers.support import CollectorProcess

#: A small workflow with known content: 2 phases, 2 steps, a redo, 5 sub-agents, 2 costs.
WORKFLOW = """
import agent_shim
t = agent_shim.activate()
with t.run("queries demo") as run:
    with run.phase("planning"):
        t.event("message", agent_name="planner", inputs={"content": "plan it"})
        t.cost(model="m", agent_name="planner", prompt_tokens=10, completion_tokens=5,
               total_tokens=15, cost_usd=0.001)
    with run.phase("control"):
        with run.step(1, "simulate"):
            with t.span("agent_call", agent_name="engineer"):
                t.event("tool_call", agent_name="executor", inputs={"name": "run"})
                t.cost(model="m", agent_name="engineer", total_tokens=100, cost_usd=0.01)
        try:
            with run.step(2, "fit"):
                raise ValueError("fit diverged")
        except ValueError:
            pass
        with run.redo(2, "wider prior"):
            t.event("message", agent_name="engineer", inputs={"content": "refit"})
print(f"run={run.uuid} flushed={t.flush(30)}")
"""


def cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "collector", "--dsn", dsn, *args],
                          capture_output=True, text=True, timeout=60)


def ok(dsn: str, *args: str) -> str:
    result = cli(dsn, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def stored(collector: CollectorProcess, agent_env: dict[str, str]) -> tuple[str, str]:
    env = {**os.environ, **agent_env, "CMBAGENT_COLLECTOR_URL": collector.url}
    result = subprocess.run([sys.executable, "-c", WORKFLOW], env=env, capture_output=True,
                            text=True, timeout=60)
    assert "flushed=True" in result.stdout, result.stderr
    return collector.dsn, re.search(r"run=(\S+)", result.stdout).group(1)


def _mask(text: str) -> str:
    """Durations and times vary from run to run."""
    text = re.sub(r"\b\d+(\.\d+)?(ms|s)\b", "D", text)
    return re.sub(r"\d\d:\d\d:\d\d\.\d+", "T", text)


def test_runs(stored: tuple[str, str]) -> None:
    dsn, run = stored
    text = ok(dsn, "runs").splitlines()
    assert text[0].split() == ["RUN", "STATUS", "STARTED", "DURATION", "EVENTS", "COST", "TASK"]
    assert text[1].startswith(f"{run}  completed  ")
    assert text[1].endswith("10    $0.0110  queries demo")
    [data] = json.loads(ok(dsn, "runs", "--json", "--limit", "5"))
    assert {k: data[k] for k in ("id", "status", "task", "events", "tokens", "cost_usd")} == {
        "id": run, "status": "completed", "task": "queries demo", "events": 10, "tokens": 115,
        "cost_usd": 0.011}
    assert data["duration_s"] >= 0


def test_tree_text(stored: tuple[str, str]) -> None:
    dsn, run = stored
    lines = [line.rstrip() for line in _mask(ok(dsn, "tree", run)).splitlines()]
    assert lines[:3] == [f"run {run}  completed  D  task: queries demo",
                         "10 events, 115 tokens, $0.0110 (0 events outside any node)", ""]
    rows = [re.split(r"\s{2,}", line.strip(), maxsplit=7) for line in lines[4:]]
    assert rows == [
        ["planning", "phase", "completed", "D", "2", "15", "$0.0010"],
        ["└ planner", "sub_agent", "completed", "D", "1", "15", "$0.0010"],
        ["control", "phase", "completed", "D", "1", "0", "$0.0000"],
        ["step_1", "step", "completed", "D", "3", "100", "$0.0100"],
        ["├ engineer", "sub_agent", "completed", "D", "1", "100", "$0.0100"],
        ["└ executor", "sub_agent", "completed", "D", "1", "0", "$0.0000"],
        ["step_2", "step", "failed", "D", "1", "0", "$0.0000", "error: ValueError: fit diverged"],
        ["step_2_redo_1", "branch_point", "completed", "-", "1", "0", "$0.0000",
         "conditional from step_2 [redo_1]; hypothesis: wider prior"],
        ["step_2_retry_1", "step", "completed", "D", "2", "0", "$0.0000"],
        ["└ engineer", "sub_agent", "completed", "D", "1", "0", "$0.0000"]]


def test_tree_json(stored: tuple[str, str]) -> None:
    dsn, run = stored
    tree = json.loads(ok(dsn, "tree", run, "--json"))
    assert tree["run"]["id"] == run and tree["totals"] == {"events": 10, "tokens": 115,
                                                           "cost_usd": 0.011}
    shape = [(n["name"], n["node_type"], n["depth"], n["status"], n["events"],
              n["totals"]["events"],
              [(c["name"], c["parent_node_id"] == n["id"], c["depth"]) for c in n["children"]])
             for n in tree["nodes"]]
    assert shape == [
        ("planning", "phase", 0, "completed", 1, 2, [("planner", True, 1)]),
        ("control", "phase", 0, "completed", 1, 1, []),
        ("step_1", "step", 0, "completed", 1, 3, [("engineer", True, 1), ("executor", True, 1)]),
        ("step_2", "step", 0, "failed", 1, 1, []),
        ("step_2_redo_1", "branch_point", 0, "completed", 1, 1, []),
        ("step_2_retry_1", "step", 0, "completed", 1, 2, [("engineer", True, 1)])]
    engineer = tree["nodes"][2]["children"][0]
    assert (engineer["tokens"], engineer["cost_usd"], engineer["agent"]) == (100, 0.01, "engineer")
    branch = tree["nodes"][4]
    assert branch["meta"]["branch_name"] == "redo_1"
    assert branch["meta"]["hypothesis"] == "wider prior"
    names = {n["id"]: n["name"] for n in tree["nodes"]}
    assert sorted((names[e["from"]], names[e["to"]], e["dependency_type"], e["condition"])
                  for e in tree["edges"]) == [
        ("control", "step_1", "sequential", None), ("planning", "control", "sequential", None),
        ("step_1", "step_2", "sequential", None),
        ("step_2", "step_2_redo_1", "conditional", "redo_1"),
        ("step_2_redo_1", "step_2_retry_1", "sequential", None)]


def test_events_in_order_with_keyset_pages(stored: tuple[str, str]) -> None:
    dsn, run = stored
    everything = json.loads(ok(dsn, "events", run, "--json"))
    kinds = [(e["event_type"], e["event_subtype"], e["node"]) for e in everything["events"]]
    assert kinds == [
        ("workflow", "phase", "planning"), ("message", None, "planner"),
        ("workflow", "phase", "control"), ("workflow", "step", "step_1"),
        ("agent_call", None, "engineer"), ("tool_call", None, "executor"),
        ("workflow", "step", "step_2"), ("workflow", "redo_requested", "step_2_redo_1"),
        ("workflow", "step", "step_2_retry_1"), ("message", None, "engineer")]
    orders = [e["execution_order"] for e in everything["events"]]
    assert orders == sorted(orders) and everything["next_after"] is None

    first = json.loads(ok(dsn, "events", run, "--json", "--limit", "4"))
    second = json.loads(ok(dsn, "events", run, "--json", "--limit", "4",
                           "--after", str(first["next_after"])))
    assert first["next_after"] == orders[3]
    assert [e["id"] for e in first["events"] + second["events"]] == \
        [e["id"] for e in everything["events"][:8]]

    text = _mask(ok(dsn, "events", run, "--limit", "3")).splitlines()
    assert text[0].split() == ["ORDER", "TIME", "TYPE", "STATUS", "AGENT", "NODE", "MS", "DETAIL"]
    assert [line.split()[2:6] for line in text[1:4]] == [
        ["workflow/phase", "completed", "-", "planning"],
        ["message", "completed", "planner", "planner"],
        ["workflow/phase", "completed", "-", "control"]]
    assert text[2].endswith('{"content":"plan it"}')
    assert text[4] == f"-- more: --after {orders[2]}"


def test_events_of_a_node_and_of_a_type(stored: tuple[str, str]) -> None:
    dsn, run = stored

    def names(*args: str) -> list[tuple[str, str | None]]:
        page = json.loads(ok(dsn, "events", run, "--json", *args))
        return [(e["event_type"], e["node"]) for e in page["events"]]

    step_1 = [("workflow", "step_1"), ("agent_call", "engineer"), ("tool_call", "executor")]
    assert names("--node", "step_1") == step_1
    node_id = json.loads(ok(dsn, "tree", run, "--json"))["nodes"][2]["id"]
    assert names("--node", node_id) == step_1
    assert names("--node", "step_2_retry_1/engineer") == [("message", "engineer")]
    assert names("--type", "message") == [("message", "planner"), ("message", "engineer")]
    assert names("--node", "step_1", "--type", "tool_call") == [("tool_call", "executor")]
    ambiguous = cli(dsn, "events", run, "--node", "engineer")
    assert ambiguous.returncode == 1
    assert "2 nodes named 'engineer'" in ambiguous.stderr and "parent/child" in ambiguous.stderr


def test_unknown_runs_say_how_to_find_one(stored: tuple[str, str]) -> None:
    dsn, _ = stored
    missing = str(uuid.uuid4())
    for command in ("tree", "events"):
        result = cli(dsn, command, missing)
        assert result.returncode == 1
        assert f"no run {missing}; `cmbagent-collector runs` lists the stored runs" in result.stderr
    bad = cli(dsn, "tree", "not-a-run")
    assert bad.returncode == 2 and "'not-a-run' is not a run id" in bad.stderr


def _fill(dsn: str, events: int, runs: int) -> uuid.UUID:
    """``events`` events over ``runs`` runs (the first has 40 nodes and 10,000 events)."""
    target = uuid.uuid4()
    sql = f"""
    INSERT INTO sessions (id) VALUES ('{target}');
    INSERT INTO workflow_runs (id, session_id, started_at, status)
      SELECT CASE WHEN g = 0 THEN '{target}'::uuid ELSE gen_random_uuid() END, '{target}',
             now() - g * interval '1 minute', 'completed' FROM generate_series(0, {runs - 1}) g;
    INSERT INTO dag_nodes (run_id, id, name, node_type, depth, parent_node_id, order_index)
      SELECT '{target}', md5('n' || g)::uuid, 'n' || g,
             CASE WHEN g < 8 THEN 'step' ELSE 'sub_agent' END, CASE WHEN g < 8 THEN 0 ELSE 1 END,
             CASE WHEN g < 8 THEN NULL ELSE md5('n' || g % 8)::uuid END, g
      FROM generate_series(0, 39) g;
    INSERT INTO execution_events (run_id, id, node_id, event_type, agent_name, "timestamp", inputs)
      SELECT r.id, gen_random_uuid(), CASE WHEN r.id = '{target}' THEN md5('n' || g % 40)::uuid END,
             (ARRAY['agent_call', 'message', 'llm_call'])[1 + g % 3], 'agent', now(),
             jsonb_build_object('content', 'message ' || g)
      FROM (SELECT id, row_number() OVER (ORDER BY started_at DESC) - 1 AS i FROM workflow_runs) r,
           generate_series(
             1, CASE WHEN r.i = 0 THEN 10000 ELSE ({events} - 10000) / ({runs} - 1) END) g;
    INSERT INTO cost_records (run_id, id, node_id, model, total_tokens, cost_usd, "timestamp")
      SELECT '{target}', gen_random_uuid(), md5('n' || g % 40)::uuid, 'm', 100, 0.001, now()
      FROM generate_series(1, 2000) g;
    ANALYZE;
    """

    async def run() -> None:
        connection = await connect(dsn)
        try:
            await connection.execute(sql)
            await connection.execute("VACUUM execution_events")
        finally:
            await connection.close()

    asyncio.run(run())
    return target


async def _best_ms(connection: asyncpg.Connection, fetch: Any, *args: Any, **kwargs: Any) -> float:
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        await fetch(connection, *args, **kwargs)
        best = min(best, (time.perf_counter() - started) * 1000)
    return best


def test_a_runs_tree_and_timeline_page_take_milliseconds_among_a_million_events(
        database: str) -> None:
    run = _fill(database, events=1_000_000, runs=100)

    async def measure() -> dict[str, float]:
        connection = await connect(database)
        try:
            assert await connection.fetchval("SELECT count(*) FROM execution_events") == 1_000_000
            return {
                "tree": await _best_ms(connection, reads.tree, run),
                "page": await _best_ms(connection, reads.events, run, after=5000),
                "node page": await _best_ms(connection, reads.events, run, node="n3"),
                "type page": await _best_ms(connection, reads.events, run,
                                            event_type="llm_call", after=5000),
            }
        finally:
            await connection.close()

    timings = asyncio.run(measure())
    print(" ".join(f"{k}={v:.1f}ms" for k, v in timings.items()))
    assert timings["tree"] < 100, timings
    assert max(timings["page"], timings["node page"], timings["type page"]) < 20, timings


def test_events_refuses_an_after_beyond_execution_orders(stored: tuple[str, str]) -> None:
    dsn, run = stored
    result = cli(dsn, "events", run, "--after", "99999999999999999999")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "an execution_order is 0 to 9223372036854775807, not 99999999999999999999" \
        in result.stderr
