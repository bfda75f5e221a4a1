"""What every part needs: a database of its own, a collector process, shim settings, timing."""

from __future__ import annotations

import asyncio
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_shim.config import ShimSettings
from collector.schema import connect

DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass
class Bench:
    """One invocation of the suite: where the databases live, how long to run, scratch space."""

    admin_dsn: str = DEFAULT_ADMIN_DSN
    quick: bool = False
    keep: bool = False  # keep the bench_* databases afterwards (the reads data set always stays)
    scratch: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cmbagent-bench-")))
    measured: dict[str, float] = field(default_factory=dict)  # figures one part hands to another
    #: Another source tree (e.g. a copy of main) whose collector is timed beside this one's.
    collector_source: Path | None = None
    _databases: list[str] = field(default_factory=list)

    def scale(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def dsn(self, name: str) -> str:
        base, _, query = self.admin_dsn.partition("?")
        return f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")

    def database(self, part: str, *, fresh: bool = True, migrate: bool = True) -> str:
        """``bench_<part>``, created (dropped first when ``fresh``) and migrated; its DSN."""
        name = f"bench_{part}"
        exists = run(_fetchval(self.admin_dsn, "SELECT 1 FROM pg_database WHERE datname = $1",
                               name))
        if exists and fresh:
            run(_execute(self.admin_dsn, f"DROP DATABASE {name} WITH (FORCE)"))
        if fresh or not exists:
            run(_execute(self.admin_dsn, f"CREATE DATABASE {name}"))
            if fresh:
                self._databases.append(name)
        dsn = self.dsn(name)
        if migrate:
            from collector import schema

            schema.upgrade(dsn)
        return dsn

    def settings(self, url: str, **overrides: Any) -> ShimSettings:
        """Shim settings for an agent talking to ``url``, with a spool of its own."""
        spool = Path(tempfile.mkdtemp(prefix="spool-", dir=self.scratch))
        return ShimSettings(collector_urls=(url,), spool_dir=spool, **overrides)

    def agent_env(self, url: str, **variables: str) -> dict[str, str]:
        """Environment for an agent process: capture on, a spool of its own."""
        spool = tempfile.mkdtemp(prefix="spool-", dir=self.scratch)
        return {**os.environ, "CMBAGENT_COLLECTOR_URL": url, "CMBAGENT_SPOOL_DIR": spool,
                "PYTHONPATH": str(Path(__file__).resolve().parent.parent), **variables}

    def cleanup(self) -> None:
        if not self.keep:
            for name in self._databases:
                run(_execute(self.admin_dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        shutil.rmtree(self.scratch, ignore_errors=True)


class Collector:
    """``cmbagent-collector serve`` as a child process, as an operator runs it; ``source`` is
    the tree to run it from (default: this one)."""

    def __init__(self, bench: Bench, dsn: str, source: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"tcp://127.0.0.1:{self.port}"
        self.log = bench.scratch / f"collector-{self.port}.log"
        env = None if source is None else {**os.environ, "PYTHONPATH": str(source)}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "collector", "--dsn", dsn, "serve", "--bind", self.url,
                 "--http", "off"],
                stdout=log, stderr=subprocess.STDOUT, cwd=source, env=env)
        deadline = time.monotonic() + 60
        while not _listening(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the collector did not start:\n{self.log.read_text()}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def collector(bench: Bench, dsn: str, source: Path | None = None) -> Iterator[Collector]:
    process = Collector(bench, dsn, source)
    try:
        yield process
    finally:
        process.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


async def _execute(dsn: str, sql: str) -> None:
    connection = await connect(dsn)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


async def _fetchval(dsn: str, sql: str, *args: Any) -> Any:
    connection = await connect(dsn)
    try:
        return await connection.fetchval(sql, *args)
    finally:
        await connection.close()


def fetchval(dsn: str, sql: str, *args: Any) -> Any:
    return run(_fetchval(dsn, sql, *args))


def execute(dsn: str, sql: str) -> None:
    run(_execute(dsn, sql))


def pin(pids: list[int], cpus: str) -> None:
    """Every thread of these processes on ``cpus`` (``taskset`` syntax, e.g. ``"0"`` or
    ``"0-1"``)."""
    for pid in pids:
        subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(pid)], check=True,
                       stdout=subprocess.DEVNULL)


def rotated(items: list[Any], round_number: int) -> list[Any]:
    """The items in a different order each round, so no variant always runs first or last."""
    shift = round_number % len(items)
    return items[shift:] + items[:shift]


def machine(admin_dsn: str = DEFAULT_ADMIN_DSN) -> dict[str, str]:
    """What the figures were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "unknown"
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    versions = {}
    for module in ("autogen", "zmq", "msgpack", "asyncpg", "opentelemetry.sdk", "sqlalchemy"):
        try:
            from importlib.metadata import version

            dist = {"autogen": "ag2", "zmq": "pyzmq", "opentelemetry.sdk": "opentelemetry-sdk",
                    }.get(module, module)
            versions[dist] = version(dist)
        except Exception:
            pass
    postgres = "unknown"
    try:
        postgres = fetchval(admin_dsn, "SHOW server_version")
    except Exception:
        pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": f"{os.cpu_count()} CPUs ({cpu}), {memory} RAM, {platform.system()} "
                   f"{platform.release()}",
        "python": platform.python_version(),
        "postgresql": postgres,
        "packages": ", ".join(f"{k} {v}" for k, v in versions.items()),
    }
