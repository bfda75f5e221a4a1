"""The workflow model end to end: the example workflow and worker processes, through a real
collector into PostgreSQL; and the model's rules on a recording tracker."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from agent_shim import DisabledTracker
from agent_shim.context import CURRENT
from agent_shim.testing import RecordingSink, recording_tracker
from agent_shim.workflow import MaxRedosExceeded, WorkflowError
from collector.schema import connect

from .helpers.support import CollectorProcess, fetch, fetchval

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "cmbagent_workflow.py"
AG2_TYPES = ("agent_call", "message", "tool_call", "code_exec", "handoff", "llm_call",
             "conversation", "human_input")
DRIVERS = ("asyncpg", "psycopg", "psycopg2", "sqlalchemy", "pg8000")
COLLECTOR_APP = "cmbagent-collector"

#: Runs the example, then reports which database drivers the process imported.
RUN_EXAMPLE = f"""
import runpy, sys
try:
    runpy.run_path({str(EXAMPLE)!r}, run_name="__main__")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print("drivers=" + ",".join(m for m in {DRIVERS!r} if m in sys.modules))
sys.exit(code)
"""


class ConnectionWatch:
    """Polls pg_stat_activity for every backend connected to one database while it runs."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.seen: dict[int, str] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._poll()), daemon=True)

    async def _poll(self) -> None:
        connection = await connect(self.dsn)
        try:
            self._ready.set()
            while not self._stop.is_set():
                for row in await connection.fetch(
                        "SELECT pid, application_name FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"):
                    self.seen.setdefault(row["pid"], row["application_name"])
                await asyncio.sleep(0.005)
        finally:
            await connection.close()

    def __enter__(self) -> ConnectionWatch:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _line(output: str, key: str) -> str:
    return next(line for line in output.splitlines() if line.startswith(f"{key}="))[len(key) + 1:]


@pytest.fixture
def example_run(database: str, tmp_path: Path,
                agent_env: dict[str, str]) -> tuple[str, uuid.UUID, str]:
    """The example workflow, run once against a collector whose connections are labelled."""
    collector = CollectorProcess(f"{database}?application_name={COLLECTOR_APP}", tmp_path,
                                 extra=("--no-migrate",)).start()
    try:
        env = {**os.environ, **agent_env, "CMBAGENT_COLLECTOR_URL": collector.url,
               "PGAPPNAME": "agent-under-test"}
        with ConnectionWatch(database) as watch:
            result = subprocess.run([sys.executable, "-c", RUN_EXAMPLE], env=env, cwd=tmp_path,
                                    capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert set(watch.seen.values()) == {COLLECTOR_APP}, watch.seen
    finally:
        collector.kill()
    return database, uuid.UUID(_line(result.stdout, "run")), result.stdout


def _nodes(dsn: str, run: uuid.UUID) -> list[dict[str, Any]]:
    return [{**r, "meta": json.loads(r["meta"])} for r in map(dict, fetch(
        dsn, "SELECT id, name, node_type, parent_node_id, depth, agent, status, order_index, "
        "meta, started_at, completed_at FROM dag_nodes WHERE run_id = $1 "
        "ORDER BY depth, order_index", run))]


def test_example_workflow_is_one_session_one_run_with_the_full_tree(example_run) -> None:
    dsn, run, output = example_run
    assert _line(output, "drivers") == ""  # no database driver imported by the agent process
    assert _line(output, "delivered") == "True"
    assert [r["status"] for r in fetch(dsn, "SELECT status FROM sessions")] == ["completed"]
    assert fetchval(dsn, "SELECT count(*) FROM workflow_runs") == 1
    [stored_run] = fetch(dsn, "SELECT status, task_description FROM workflow_runs")
    assert stored_run["status"] == "completed"

    nodes = _nodes(dsn, run)
    top = [(n["name"], n["node_type"], n["status"]) for n in nodes if n["depth"] == 0]
    assert top == [("planning", "phase", "completed"), ("control", "phase", "completed"),
                   ("step_1", "step", "completed"), ("step_2", "step", "completed"),
                   ("step_3", "step", "failed"), ("step_3_redo_1", "branch_point", "completed"),
                   ("step_3_retry_1", "step", "completed"), ("step_4", "step", "completed")]
    by_name = {n["name"]: n for n in nodes if n["depth"] == 0}
    assert all(n["parent_node_id"] is None for n in by_name.values())

    branch = by_name["step_3_redo_1"]["meta"]
    assert branch["branch_name"] == "redo_1"
    assert branch["hypothesis"] == "The prior on H0 is empty; widen it to (50, 90) km/s/Mpc."
    assert branch["source_node_id"] == str(by_name["step_3"]["id"])
    assert by_name["step_3_retry_1"]["meta"]["redo"] == 1

    names = {n["id"]: n["name"] for n in nodes}
    edges = {(names[r["from_node_id"]], names[r["to_node_id"]], r["dependency_type"],
              r["condition"])
             for r in fetch(dsn, "SELECT * FROM dag_edges WHERE run_id = $1", run)}
    assert edges == {
        ("planning", "control", "sequential", None), ("control", "step_1", "sequential", None),
        ("step_1", "step_2", "sequential", None), ("step_2", "step_3", "sequential", None),
        ("step_3", "step_3_redo_1", "conditional", "redo_1"),
        ("step_3_redo_1", "step_3_retry_1", "sequential", None),
        ("step_3_retry_1", "step_4", "sequential", None)}

    subs = [n for n in nodes if n["node_type"] == "sub_agent"]
    assert {n["depth"] for n in subs} == {1}
    agents_of = {name: {s["agent"] for s in subs if s["parent_node_id"] == node["id"]}
                 for name, node in by_name.items()}
    assert agents_of["planning"] == {"planner", "plan_reviewer"}
    assert agents_of["control"] == {"admin"}  # the human reviewer, between step 3 and its redo
    for step in ("step_1", "step_3", "step_3_retry_1", "step_4"):
        assert {"engineer", "executor", "control"} <= agents_of[step], step
    assert {"researcher", "control"} <= agents_of["step_2"]
    assert not agents_of["step_3_redo_1"]
    # Each sub-agent node closes with its step.
    step_3 = by_name["step_3"]["id"]
    assert {s["status"] for s in subs if s["parent_node_id"] == step_3} == {"failed"}


def test_example_workflow_events_and_costs_stay_with_their_attempt(example_run) -> None:
    dsn, run, _ = example_run
    events = [dict(r) for r in fetch(
        dsn, "SELECT e.event_type, e.event_subtype, e.agent_name, e.status, e.node_id, "
        "n.name AS node, n.node_type, n.agent, n.parent_node_id, p.name AS step "
        "FROM execution_events e LEFT JOIN dag_nodes n ON n.run_id = e.run_id AND n.id = e.node_id "
        "LEFT JOIN dag_nodes p ON p.run_id = e.run_id AND p.id = n.parent_node_id "
        "WHERE e.run_id = $1 ORDER BY e.execution_order", run)]
    types = Counter(e["event_type"] for e in events)
    assert sum(types[t] for t in AG2_TYPES) >= 100
    assert all(types[t] > 0 for t in AG2_TYPES), types
    assert (types["tool_call"], types["human_input"], types["conversation"]) == (1, 1, 7)

    # Inside the workflow, an agent's events point at its own sub-agent node.
    assert all(e["node_id"] is not None for e in events if e["event_type"] in AG2_TYPES)
    for e in events:
        if e["event_type"] in AG2_TYPES and e["agent_name"] is not None:
            assert (e["node_type"], e["agent"]) == ("sub_agent", e["agent_name"]), e

    code = [(e["step"], e["status"]) for e in events if e["event_type"] == "code_exec"]
    assert code == [("step_1", "completed"), ("step_3", "failed"), ("step_3", "failed"),
                    ("step_3_retry_1", "completed"), ("step_4", "completed")]
    workflow = Counter((e["event_subtype"], e["node"], e["status"]) for e in events
                       if e["event_type"] == "workflow")
    assert workflow[("attempt", "step_3", "failed")] == 2
    assert workflow[("attempt", "step_3_retry_1", "completed")] == 1
    assert workflow[("redo_requested", "step_3_redo_1", "completed")] == 1
    assert workflow[("step", "step_3", "failed")] == 1
    assert sum(workflow.values()) == 18  # 2 phases, 5 steps, 6 attempts, 1 redo, 4 lifecycle
    assert Counter(e["event_subtype"] for e in events if e["event_type"] == "callback") == {
        "agent_message": 19, "code_execution": 5, "cost_update": 7}

    costs = {r["step"]: (r["tokens"], r["calls"]) for r in fetch(
        dsn, "SELECT p.name AS step, sum(c.total_tokens) AS tokens, count(*) AS calls "
        "FROM cost_records c JOIN dag_nodes n ON n.run_id = c.run_id AND n.id = c.node_id "
        "JOIN dag_nodes p ON p.run_id = n.run_id AND p.id = n.parent_node_id "
        "WHERE c.run_id = $1 GROUP BY p.name", run)}
    assert sum(calls for _, calls in costs.values()) == types["llm_call"]
    assert costs["step_3"][1] == 2 * costs["step_3_retry_1"][1]  # two failed attempts, one retry


def test_a_worker_process_with_the_run_id_lands_in_its_parents_run(
        collector: CollectorProcess, agent_env: dict[str, str], tmp_path: Path) -> None:
    worker = ("import agent_shim\n"
              "t = agent_shim.activate()\n"
              "t.event('message', agent_name='worker', inputs={'where': 'implicit'})\n"
              "with t.run('worker task') as run:\n"
              "    with run.step(9, 'worker step'):\n"
              "        t.event('message', agent_name='worker', inputs={'where': 'step'})\n"
              "print('flushed=%s' % t.flush(30))\n")
    parent = ("import os, subprocess, sys, uuid, agent_shim\n"
              "t = agent_shim.activate()\n"
              "with t.run('parent task') as run:\n"
              "    with run.step(1, 'spawn workers'):\n"
              "        t.event('message', agent_name='parent')\n"
              "        assert t.flush(30)\n"
              "        both = {'CMBAGENT_RUN_ID': str(run.uuid),\n"
              "                'CMBAGENT_SESSION_ID': str(uuid.UUID(bytes=run.session_id))}\n"
              "        run_only = {'CMBAGENT_RUN_ID': str(run.uuid)}\n"
              "        for extra in (both, run_only):\n"
              "            subprocess.run([sys.executable, '-c', sys.argv[1]],\n"
              "                           env={**os.environ, **extra}, check=True)\n"
              "print('run=%s flushed=%s' % (run.uuid, t.flush(30)))\n")
    env = {**os.environ, **agent_env, "CMBAGENT_COLLECTOR_URL": collector.url}
    result = subprocess.run([sys.executable, "-c", parent, worker], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("flushed=True") == 3, result.stdout
    run = uuid.UUID(result.stdout.split("run=")[1].split()[0])
    dsn = collector.dsn
    assert fetchval(dsn, "SELECT count(*) FROM sessions") == 1
    runs = fetch(dsn, "SELECT id, status, task_description FROM workflow_runs")
    assert [tuple(r) for r in runs] == [(run, "completed", "parent task")]
    stored = Counter((r["agent_name"], r["node"]) for r in fetch(
        dsn, "SELECT e.agent_name, p.name AS node FROM execution_events e "
        "LEFT JOIN dag_nodes n ON n.run_id = e.run_id AND n.id = e.node_id "
        "LEFT JOIN dag_nodes p ON p.run_id = n.run_id AND p.id = n.parent_node_id "
        "WHERE e.event_type = 'message'"))
    assert stored == {("parent", "step_1"): 1, ("worker", None): 2, ("worker", "step_9"): 2}
    assert fetchval(dsn, "SELECT count(*) FROM dag_nodes WHERE name = 'step_9'") == 2


pytestmark = pytest.mark.usefixtures("own_scope")

# --- the model's rules, on a recording tracker ------------------------------------------------


def _of(sink: RecordingSink, kind: str, **match: Any) -> list[dict[str, Any]]:
    return sink.of(kind, **match)


def test_steps_phases_and_sub_agents_nest_in_sync_and_async_code() -> None:
    tracker, sink = recording_tracker()

    async def step_two(run: Any) -> None:
        async with run.step(2, "async goal") as step:
            await asyncio.sleep(0)
            tracker.event("message", agent_name="engineer")
            assert CURRENT.get() == step.scope

    with tracker.run("task") as run:
        with run.phase("control") as phase:
            with run.step(1, "goal") as step:
                assert CURRENT.get() == step.scope
                with tracker.span("agent_call", agent_name="engineer") as span:
                    tracker.event("tool_call", agent_name="executor")
                    thread = threading.Thread(target=tracker.event, args=("message",),
                                              kwargs={"agent_name": "executor",
                                                      "scope": span.inner})
                    thread.start()
                    thread.join()
            asyncio.run(step_two(run))
            assert CURRENT.get() == phase.scope
    starts = _of(sink, "node", moment="start")
    assert [(n["name"], n["node_type"], n["depth"]) for n in starts] == [
        ("control", "phase", 0), ("step_1", "step", 0), ("engineer", "sub_agent", 1),
        ("executor", "sub_agent", 1), ("step_2", "step", 0), ("engineer", "sub_agent", 1)]
    step1, engineer1, executor1 = starts[1]["id"], starts[2]["id"], starts[3]["id"]
    assert starts[2]["parent_node_id"] == starts[3]["parent_node_id"] == step1
    assert starts[5]["parent_node_id"] == starts[4]["id"]
    events = _of(sink, "event", moment="point")
    assert [(e["event_type"], e["node_id"]) for e in events] == [
        ("tool_call", executor1), ("message", executor1), ("message", starts[5]["id"])]
    span = _of(sink, "event", moment="start", event_type="agent_call")[0]
    assert span["node_id"] == engineer1
    assert {n["status"] for n in _of(sink, "node", moment="end")} == {"completed"}


def test_a_failed_step_then_a_redo_keeps_attempts_apart() -> None:
    tracker, sink = recording_tracker()
    with tracker.run("task") as run:
        with pytest.raises(ValueError):
            with run.step(3, "fit") as step:
                with pytest.raises(RuntimeError):
                    with step.attempt():
                        tracker.cost(model="m", agent_name="engineer", total_tokens=10)
                        raise RuntimeError("attempt 1")
                raise ValueError("step failed")
        with run.redo(3, "wider prior") as retry:
            tracker.cost(model="m", agent_name="engineer", total_tokens=20)
        with pytest.raises(MaxRedosExceeded, match="redo 2 exceeds max_redos=1"):
            run.redo(3, "again", max_redos=1)
    nodes = {n["name"]: n for n in _of(sink, "node", moment="start")}
    point = {n["name"]: n for n in _of(sink, "node", moment="point") if n["name"]}
    assert point["step_3_redo_1"]["meta"]["branch_name"] == "redo_1"
    costs = [(c["node_id"], c["total_tokens"]) for c in _of(sink, "cost")]
    engineers = [n["id"] for n in _of(sink, "node", moment="start", name="engineer")]
    assert [n["parent_node_id"] for n in _of(sink, "node", moment="start", name="engineer")] == [
        nodes["step_3"]["id"], retry.id]
    assert costs == [(engineers[0], 10), (engineers[1], 20)]
    edges = [(e["from_node_id"], e["to_node_id"], e["dependency_type"], e["condition"])
             for e in _of(sink, "edge")]
    assert edges == [(nodes["step_3"]["id"], point["step_3_redo_1"]["id"], "conditional", "redo_1"),
                     (point["step_3_redo_1"]["id"], retry.id, "sequential", None)]
    refused = _of(sink, "event", event_subtype="max_redos_reached")
    assert len(refused) == 1 and refused[0]["meta"]["forced_acceptance"] is True
    assert refused[0]["node_id"] == retry.id
    forced = [n for n in _of(sink, "node", moment="point") if n["id"] == retry.id]
    assert forced[0]["meta"] == {"step": 3, "redo": 2, "max_redos": 1, "forced_acceptance": True}
    ends = {n["id"]: n for n in _of(sink, "node", moment="end")}
    assert ends[nodes["step_3"]["id"]]["status"] == "failed"
    assert ends[nodes["step_3"]["id"]]["meta"] == {"attempts": 1}
    assert _of(sink, "event", moment="end", event_subtype=None)  # spans closed
    attempts = {s["id"] for s in _of(sink, "event", event_subtype="attempt")}
    assert [e["status"] for e in _of(sink, "event", moment="end")
            if e["id"] in attempts] == ["failed"]


def test_misuse_is_refused_with_what_to_do() -> None:
    tracker, sink = recording_tracker()
    with tracker.run("task") as run:
        with pytest.raises(WorkflowError, match=r"record it first with run.step\(2, goal\)"):
            run.redo(2, "h")
        with run.step(1, "once"):
            pass
        with pytest.raises(WorkflowError, match=r"already ran .* run.redo\(1, hypothesis\)"):
            run.step(1, "twice")
        with pytest.raises(WorkflowError, match="the next is redo 1, not redo 3"):
            run.redo(1, "h", redo_number=3)
        run.skip(4, "not needed", reason="the reviewer skipped it")
    with pytest.raises(WorkflowError, match="the run is not open"):
        run.step(5, "late")
    skipped = [n for n in _of(sink, "node", moment="end") if n["status"] == "skipped"]
    assert len(skipped) == 1 and skipped[0]["meta"] == {"reason": "the reviewer skipped it"}
    assert len(_of(sink, "event", event_subtype="step_skipped")) == 1


def test_capture_off_the_same_code_runs_and_records_nothing() -> None:
    tracker = DisabledTracker()
    with tracker.run("task") as run:
        with run.phase("control"):
            with run.step(1, "goal") as step:
                with step.attempt():
                    tracker.event("message", agent_name="engineer")
        with run.redo(1, "h", redo_number=1, max_redos=2):
            pass
        with pytest.raises(MaxRedosExceeded):
            run.redo(1, "h", redo_number=3, max_redos=2)
    assert CURRENT.get() is None
