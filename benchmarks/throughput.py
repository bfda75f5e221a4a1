"""Part 3: sustained events per second into PostgreSQL, next to psql \\copy of the same rows.

Ours: ``PRODUCERS`` agent processes (the real shim, configured from the environment as users
do) each emit ``events`` point events as fast as they can, then ``flush`` until the collector
has acknowledged every frame after its commit. The rate is all events over the time from the
first emit to the last acknowledgement.

Ceiling: the rows those events became are dumped, deleted, and loaded again into the same
``execution_events`` table (same indexes) with ``psql -c "\\copy ... FROM file"``, timed. The
table is vacuumed after every delete, so each round starts from the same state.

Collector alone: the same load with the collector pinned (``taskset``) to one CPU and the agents
and PostgreSQL's sessions to the other, so that its CPU time is its own; its capacity is events
per CPU-second it spent. With ``--collector-source DIR`` the collector of that tree (e.g. a copy
of main) is timed the same way, alternating with this one's in every round.

Run as ``python -m benchmarks.throughput produce COUNT START_AT`` it is one producer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collector.settings import DEFAULT_SCHEMA

from .harness import Bench, Collector, collector, execute, pin, rotated
from .harness import run as run_async
from .report import Result
from .stats import Summary, ratios

GOAL = 0.5  # issue 10: end to end, agents, collector and PostgreSQL sharing 2 cores
ALONE_GOAL = 1.5  # the collector's capacity on a CPU of its own, over \copy's rate
PRODUCERS = 2
#: "alone": the collector on one CPU, the agents and PostgreSQL's sessions on the other.
MODES = ("shared", "alone")
COLLECTOR_CPU, OTHERS_CPU = "0", "1"
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


def run_producers(bench: Bench, url: str, count: int,
                  cpus: str | None = None) -> dict[str, float]:
    start_at = time.time() + 3.0  # after every interpreter has started and connected
    env = bench.agent_env(url)
    pinned = ["taskset", "-c", cpus] if cpus else []
    processes = [subprocess.Popen([*pinned, sys.executable, "-m", "benchmarks.throughput",
                                   "produce", str(count), str(start_at)], env=env,
                                  stdout=subprocess.PIPE, text=True) for _ in range(PRODUCERS)]
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

    def backends(self) -> list[int]:
        """PostgreSQL's sessions in this database."""
        return list(self._now()["postgres"])

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


@dataclass
class Variant:
    """One collector under test: its process, database and figures per mode."""

    name: str
    process: Collector
    dsn: str
    database: str
    rates: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in MODES})
    emit: list[float] = field(default_factory=list)
    cpu: dict[str, CpuMeter] = field(default_factory=dict)

    def measure(self, bench: Bench, count: int, mode: str) -> list[Any]:
        """One load in ``mode``; the runs it made."""
        if mode not in self.cpu:
            self.cpu[mode] = CpuMeter(self.process.pid, self.database)
        cpu = self.cpu[mode]
        all_cpus = f"0-{(os.cpu_count() or 2) - 1}"
        alone = mode == "alone"
        before = run_async(_runs(self.dsn))
        if alone:
            pin([self.process.pid], COLLECTOR_CPU)
            pin(cpu.backends(), OTHERS_CPU)
        try:
            cpu.start()
            measured = run_producers(bench, self.process.url, count,
                                     OTHERS_CPU if alone else None)
            cpu.stop(count * PRODUCERS, measured["agents_cpu"])
        finally:
            if alone:
                pin([self.process.pid, *cpu.backends()], all_cpus)
        self.rates[mode].append(measured["rate"])
        if not alone:
            self.emit.append(measured["emit_rate"])
        return sorted(run_async(_runs(self.dsn)) - before)

    def capacity(self) -> list[float]:
        """Events per CPU-second the collector spent, on a CPU of its own."""
        return [1e6 / ms for ms in self.cpu["alone"].spent["collector"]]


def run(bench: Bench) -> list[Result]:
    rounds, count = bench.scale(3, 2), bench.scale(40_000, 15_000)
    path = str(bench.scratch / "rows.copy")
    ceiling: list[float] = []
    sources: list[tuple[str, Path | None]] = [("ours", None)]
    if bench.collector_source is not None:
        sources.append((f"{bench.collector_source}", bench.collector_source))
    with ExitStack() as stack:
        variants = []
        for i, (name, source) in enumerate(sources):
            part = "throughput" if i == 0 else f"throughput_{i}"
            # Another tree's collector migrates its own database (it may be behind ours).
            dsn = bench.database(part, migrate=source is None)
            variants.append(Variant(name, stack.enter_context(collector(bench, dsn, source)),
                                    dsn, f"bench_{part}"))
        for round_number in range(rounds):
            for variant in rotated(variants, round_number):
                for mode in rotated(list(MODES), round_number):
                    runs = variant.measure(bench, count, mode)
                    rows = run_async(_dump(variant.dsn, path, runs))
                    if rows != count * PRODUCERS:
                        raise RuntimeError(f"{variant.name}: stored {rows} events, expected "
                                           f"{count * PRODUCERS}")
                    _delete(variant.dsn, runs)
                    if variant is variants[0] and mode == "shared":
                        ceiling.append(rows / psql_copy(variant.dsn, path))
                        _delete(variant.dsn, runs)
    ours = variants[0]
    bench.measured["throughput"] = Summary.of(ours.rates["shared"]).median
    copy = "psql \\copy " + Summary.of(ceiling).format("/s")
    ratio, capacity = ratios(ours.rates["shared"], ceiling), ratios(ours.capacity(), ceiling)
    results = [
        Result("3 throughput", f"events/s committed ({PRODUCERS} agents, "
               f"{count * PRODUCERS:,} per round)", Summary.of(ours.rates["shared"]).format("/s"),
               copy, ratio, f"≥ {GOAL} × \\copy", ratio.median >= GOAL,
               note=f"the agents' callers emitted at {Summary.of(ours.emit).format('/s')}; CPU "
                    f"ms per 1,000 events: {ours.cpu['shared'].summary()} (2 CPUs shared by all "
                    "of them)"),
        Result("3 throughput", "collector alone: events per collector CPU-second (its own CPU)",
               Summary.of(ours.capacity()).format("/s"), copy, capacity,
               f"≥ {ALONE_GOAL} × \\copy", capacity.median >= ALONE_GOAL,
               note=f"collector on CPU {COLLECTOR_CPU}, agents and PostgreSQL on CPU "
                    f"{OTHERS_CPU}: committed {Summary.of(ours.rates['alone']).format('/s')}; "
                    f"CPU ms per 1,000 events: {ours.cpu['alone'].summary()}"),
    ]
    for other in variants[1:]:
        for mode in MODES:
            ratio = ratios(ours.rates[mode], other.rates[mode])
            results.append(Result(
                "3 throughput", f"events/s committed, {mode}, beside the collector of "
                f"{other.name}", Summary.of(ours.rates[mode]).format("/s"),
                Summary.of(other.rates[mode]).format("/s"), ratio,
                note=f"CPU ms per 1,000 events, ours: {ours.cpu[mode].summary()}; theirs: "
                     f"{other.cpu[mode].summary()}" + (
                         f"; collector capacity {Summary.of(other.capacity()).format('/s')}"
                         if mode == "alone" else "")))
    return results


if __name__ == "__main__":
    if sys.argv[1:2] == ["produce"]:
        print(json.dumps(produce(int(sys.argv[2]), float(sys.argv[3]))))
