"""Part 3: sustained events per second into PostgreSQL, next to psql \\copy of the same rows.

Ours: ``PRODUCERS`` agent processes (the real shim, configured from the environment as users
do) each emit ``events`` point events as fast as they can, then ``flush`` until the collector
has acknowledged every frame after its commit. The rate is all events over the time from the
first emit to the last acknowledgement.

Ceiling: the rows those events became are dumped, deleted, and loaded again into the same
``execution_events`` table (same indexes) with ``psql -c "\\copy ... FROM file"``, timed. The
table is vacuumed after every delete, so each round starts from the same state.

Run as ``python -m benchmarks.throughput produce COUNT START_AT`` it is one producer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from collector.settings import DEFAULT_SCHEMA

from .harness import Bench, collector, execute
from .harness import run as run_async
from .report import Result
from .stats import Summary, ratios

GOAL = 0.75
PRODUCERS = 2
CONTENT = "The power spectrum peaks at l=220; the engineer re-runs the fit with new priors. " * 5
COLUMNS = ("run_id, id, session_id, node_id, parent_event_id, event_type, event_subtype, "
           "agent_name, status, \"timestamp\", started_at, completed_at, inputs, outputs, meta, "
           "error_message, execution_order, depth")


def produce(count: int, start_at: float) -> dict[str, Any]:
    """One agent process's share: emit ``count`` events, then wait for their commit."""
    import agent_shim

    tracker = agent_shim.activate()
    tracker.event("note", meta={"warm": True})
    tracker.flush(60)  # connected, run stored
    time.sleep(max(0.0, start_at - time.time()))
    cpu = time.process_time()
    started = time.time()
    for i in range(count):
        tracker.event("message", agent_name="engineer",
                      inputs={"sender": "planner", "recipient": "engineer", "content": CONTENT},
                      meta={"i": i})
    emitted = time.time()
    delivered = tracker.flush(300)
    return {"started": started, "emitted": emitted, "acked": time.time(), "ok": delivered,
            "cpu": time.process_time() - cpu}


def run_producers(bench: Bench, url: str, count: int) -> dict[str, float]:
    start_at = time.time() + 3.0  # after every interpreter has started and connected
    env = bench.agent_env(url)
    processes = [subprocess.Popen([sys.executable, "-m", "benchmarks.throughput", "produce",
                                   str(count), str(start_at)], env=env, stdout=subprocess.PIPE,
                                  text=True) for _ in range(PRODUCERS)]
    reports = []
    for process in processes:
        out, _ = process.communicate(timeout=600)
        if process.returncode != 0:
            raise RuntimeError(f"a producer failed ({process.returncode})")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    if not all(r["ok"] for r in reports):
        raise RuntimeError("a producer's events were not all acknowledged")
    first = min(r["started"] for r in reports)
    total = count * PRODUCERS
    return {"rate": total / (max(r["acked"] for r in reports) - first),
            "emit_rate": total / (max(r["emitted"] for r in reports) - first),
            "agents_cpu": sum(r["cpu"] for r in reports)}


async def _dump(dsn: str, path: str, runs: list[Any]) -> int:
    from collector.schema import connect

    connection = await connect(dsn)
    try:
        await connection.copy_from_query(
            f"SELECT {COLUMNS} FROM execution_events WHERE run_id = ANY($1::uuid[]) "
            "AND event_type = 'message'", runs, output=path)
        return await connection.fetchval(
            "SELECT count(*) FROM execution_events WHERE run_id = ANY($1::uuid[]) "
            "AND event_type = 'message'", runs)
    finally:
        await connection.close()


async def _runs(dsn: str) -> set[Any]:
    from collector.schema import connect

    connection = await connect(dsn)
    try:
        return {r["id"] for r in await connection.fetch("SELECT id FROM workflow_runs")}
    finally:
        await connection.close()


def _delete(dsn: str, runs: list[Any]) -> None:
    ids = ",".join(f"'{r}'" for r in runs)
    execute(dsn, f"DELETE FROM execution_events WHERE run_id IN ({ids}) AND event_type = 'message'")
    execute(dsn, "VACUUM ANALYZE execution_events")


def psql_copy(dsn: str, path: str) -> float:
    """Seconds ``psql`` takes to ``\\copy`` the file into ``execution_events``."""
    started = time.perf_counter()
    # Our tables live in a schema of their own, as every connection of the collector sees them.
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", dsn, "-c",
                    f"\\copy execution_events ({COLUMNS}) FROM '{path}'"], check=True,
                   env={**os.environ, "PGOPTIONS": f"-c search_path={DEFAULT_SCHEMA}"})
    return time.perf_counter() - started


class CpuMeter:
    """CPU seconds spent by the collector and its database sessions (the agents report theirs)."""

    def __init__(self, collector_pid: int, database: str) -> None:
        import psutil

        self._collector = psutil.Process(collector_pid)
        self._database = database
        self.spent: dict[str, list[float]] = {"agents": [], "collector": [], "postgres": []}

    def _now(self) -> dict[str, Any]:
        import psutil

        backends = {}
        for backend in psutil.process_iter(["cmdline", "cpu_times"]):
            if f" {self._database} " in " ".join(backend.info["cmdline"] or []):
                times = backend.info["cpu_times"]
                backends[backend.pid] = times.user + times.system
        times = self._collector.cpu_times()
        return {"collector": times.user + times.system, "postgres": backends}

    def start(self) -> None:
        self._started = self._now()

    def stop(self, events: int, agents: float) -> None:
        """Record CPU milliseconds per 1,000 events since :meth:`start`."""
        now, then = self._now(), self._started
        spent = {"agents": agents,
                 "collector": now["collector"] - then["collector"],
                 "postgres": sum(v - then["postgres"].get(pid, 0.0)
                                 for pid, v in now["postgres"].items()
                                 if pid in then["postgres"])}
        for name, seconds in spent.items():
            self.spent[name].append(seconds / events * 1e6)

    def summary(self) -> str:
        return ", ".join(f"{name} {Summary.of(values).median:.0f}"
                         for name, values in self.spent.items())


def run(bench: Bench) -> list[Result]:
    rounds, count = bench.scale(3, 2), bench.scale(40_000, 15_000)
    dsn = bench.database("throughput")
    ours: list[float] = []
    emit: list[float] = []
    ceiling: list[float] = []
    path = str(bench.scratch / "rows.copy")
    with collector(bench, dsn) as process:
        cpu = CpuMeter(process.pid, "bench_throughput")
        for _ in range(rounds):
            before = run_async(_runs(dsn))
            cpu.start()
            measured = run_producers(bench, process.url, count)
            cpu.stop(count * PRODUCERS, measured["agents_cpu"])
            runs = sorted(run_async(_runs(dsn)) - before)
            rows = run_async(_dump(dsn, path, runs))
            if rows != count * PRODUCERS:
                raise RuntimeError(f"stored {rows} events, expected {count * PRODUCERS}")
            _delete(dsn, runs)
            ceiling.append(rows / psql_copy(dsn, path))
            _delete(dsn, runs)
            ours.append(measured["rate"])
            emit.append(measured["emit_rate"])
    ratio = ratios(ours, ceiling)
    bench.measured["throughput"] = Summary.of(ours).median
    return [Result(
        "3 throughput", f"events/s committed ({PRODUCERS} agents, {count * PRODUCERS:,} per round)",
        Summary.of(ours).format("/s"), "psql \\copy " + Summary.of(ceiling).format("/s"),
        ratio, "≥ 0.75 × \\copy", ratio.median >= GOAL,
        note=f"the agents' callers emitted at {Summary.of(emit).format('/s')}; CPU ms per "
             f"1,000 events: {cpu.summary()} (2 CPUs shared by all of them)")]


if __name__ == "__main__":
    if sys.argv[1:2] == ["produce"]:
        print(json.dumps(produce(int(sys.argv[2]), float(sys.argv[3]))))
