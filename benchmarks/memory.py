"""Part 6: resident memory stays bounded when the far side cannot keep up.

Agent, collector down: an agent process (the real shim, from the environment) emits events as
fast as it can at a collector address where nothing listens, with the default queue (100,000
records) and a 64 MiB spool. Its RSS is sampled every 50 ms by this process. Bounded means: the
peak is reached while the queue fills, and RSS does not grow over the second half of the run
(the rest is spooled, then dropped and counted).

Collector, overloaded: the events table is locked by another session, so no commit can finish,
while agent processes send about twice the collector's ``max_pending_bytes`` (256 MiB) of
events. Bounded means its peak RSS stays under its start RSS plus that bound plus one batch in
flight (64 MiB of slack). The lock is then released and every event must arrive.

Run as ``python -m benchmarks.memory emit COUNT KIB`` it is one agent.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from typing import Any

from .harness import Bench, collector, free_port
from .harness import run as run_async
from .report import Result
from .stats import Summary

MIB = 1024 * 1024
SPOOL_BYTES = 64 * MIB
PENDING_BYTES = 256 * MIB  # collector.settings.Settings.max_pending_bytes
SLACK = 64 * MIB


def emit(count: int, kib: int) -> None:
    import agent_shim

    tracker = agent_shim.activate()
    content = "x" * (kib * 1024)
    for i in range(count):
        tracker.event("message", agent_name="engineer", inputs={"content": content},
                      meta={"i": i})
    print("emitted", flush=True)
    tracker.flush(600)


class Sampler:
    """RSS of one process, sampled on a thread until stopped; times relative to start."""

    def __init__(self, pid: int) -> None:
        import psutil

        self._process = psutil.Process(pid)
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.wait(0.05):
            try:
                self.samples.append((time.monotonic() - started, self._process.memory_info().rss))
            except Exception:
                return

    def stop(self) -> list[tuple[float, int]]:
        self._stop.set()
        self._thread.join()
        return self.samples


def _agent(bench: Bench, url: str, count: int, kib: int, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "benchmarks.memory", "emit", str(count),
                             str(kib)], env=bench.agent_env(url, **env), stdout=subprocess.PIPE,
                            text=True)


def _agent_peak(bench: Bench, count: int) -> tuple[int, int]:
    """Start and peak RSS of an agent emitting ``count`` events with no collector to take them."""
    url = f"tcp://127.0.0.1:{free_port()}"  # nothing listens here
    process = _agent(bench, url, count, 1, CMBAGENT_SPOOL_MAX_BYTES=str(SPOOL_BYTES),
                     CMBAGENT_EXIT_TIMEOUT="1")
    sampler = Sampler(process.pid)
    assert process.stdout is not None
    process.stdout.readline()  # "emitted"
    time.sleep(1.0)  # the sender spools and drops what it holds past its bounds
    process.kill()
    process.wait()
    samples = sampler.stop()
    return samples[0][1], max(rss for _, rss in samples)


def agent_with_collector_down(bench: Bench) -> Result:
    count = bench.scale(300_000, 150_000)
    start, peak = _agent_peak(bench, count)
    _, peak_long = _agent_peak(bench, 2 * count)
    bounded = peak_long <= peak * 1.1
    return Result("6 memory", f"agent RSS, collector down, {2 * count:,} events of 1 KiB",
                  f"peak {peak_long / MIB:.0f} MiB (start {start / MIB:.0f})",
                  f"half as many events: peak {peak / MIB:.0f} MiB", Summary.of([peak_long / peak]),
                  goal="bounded: ratio ≤ 1.1", met=bounded,
                  note="queue 100,000 records (the default), spool 64 MiB; past them events are "
                       "dropped and counted")


async def _lock_events(dsn: str, release: threading.Event) -> None:
    import asyncio

    from collector.schema import connect

    connection = await connect(dsn)
    try:
        async with connection.transaction():
            await connection.execute("LOCK TABLE execution_events IN ACCESS EXCLUSIVE MODE")
            while not release.is_set():
                await asyncio.sleep(0.05)
    finally:
        await connection.close()


def collector_overloaded(bench: Bench) -> Result:
    agents, kib = 2, 4
    count = 2 * PENDING_BYTES // (agents * kib * 1024)  # twice the bound, in all
    dsn = bench.database("memory")
    release = threading.Event()
    with collector(bench, dsn) as process:
        sampler = Sampler(process.pid)
        time.sleep(0.3)
        locker = threading.Thread(target=run_async, args=(_lock_events(dsn, release),))
        locker.start()
        time.sleep(0.5)
        # Each agent's queue holds all it emits: emitting outruns cleaning 4 KiB payloads, and
        # past the default 64 MiB the agent would drop (and count) what this part must store.
        producers = [_agent(bench, process.url, count, kib,
                            CMBAGENT_QUEUE_MAX_BYTES=str(2 * PENDING_BYTES))
                     for _ in range(agents)]
        for producer in producers:
            assert producer.stdout is not None
            producer.stdout.readline()
        time.sleep(3.0)  # the collector holds what it can; the agents hold the rest
        release.set()
        locker.join()
        drained_at = time.monotonic()
        for producer in producers:
            producer.wait(600)
        drain = time.monotonic() - drained_at
        samples = sampler.stop()
    stored = run_async(_count(dsn))
    start = samples[0][1]
    peak = max(rss for _, rss in samples)
    bound = start + PENDING_BYTES + SLACK
    complete = stored == agents * count
    return Result("6 memory", f"collector RSS, DB blocked, {agents * count * kib / 1024:.0f} MiB "
                  "sent", f"peak {peak / MIB:.0f} MiB (start {start / MIB:.0f})",
                  f"bound {bound / MIB:.0f} MiB", goal="≤ start + 256 + 64 MiB",
                  met=peak <= bound and complete,
                  note=f"after the lock was released all {stored:,} events were stored in "
                       f"{drain:.1f}s" if complete else f"only {stored:,} events were stored")


async def _count(dsn: str) -> Any:
    from collector.schema import connect

    connection = await connect(dsn)
    try:
        return await connection.fetchval(
            "SELECT count(*) FROM execution_events WHERE event_type = 'message'")
    finally:
        await connection.close()


def run(bench: Bench) -> list[Result]:
    return [agent_with_collector_down(bench), collector_overloaded(bench)]


if __name__ == "__main__":
    if sys.argv[1:2] == ["emit"]:
        emit(int(sys.argv[2]), int(sys.argv[3]))
