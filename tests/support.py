"""Helpers shared by the tests: databases, collector processes, agent processes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from collector.schema import connect

HERE = Path(__file__).parent
PROGRAMS = HERE / "programs.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        connection = await connect(dsn)
        try:
            return await connection.fetch(sql, *args)
        finally:
            await connection.close()

    return asyncio.run(run())


def fetchval(dsn: str, sql: str, *args: Any) -> Any:
    return fetch(dsn, sql, *args)[0][0]


def execute(dsn: str, *statements: str) -> None:
    """Run statements one by one (each in its own transaction, as CREATE DATABASE needs)."""
    async def run() -> None:
        connection = await connect(dsn)
        try:
            for statement in statements:
                await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run())


def wait_for(condition: Any, timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll until ``condition()`` is truthy; its last value, or an AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            assert value, f"condition not met within {timeout}s"
            return value
        time.sleep(interval)


@dataclass
class CollectorProcess:
    """``cmbagent-collector serve`` as a child process that tests can kill and restart."""

    dsn: str | None
    data_dir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    extra: tuple[str, ...] = ()
    schema: str | None = None  # the collector's default unless given

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def start(self) -> CollectorProcess:
        dsn = ("--dsn", self.dsn) if self.dsn else ()
        dsn += ("--schema", self.schema) if self.schema else ()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log = (self.data_dir / f"collector-{self.port}.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "collector", *dsn, "--data-dir", str(self.data_dir), "serve",
             "--bind", self.url, *self.extra], stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self._listening, timeout=60)
        return self

    def _listening(self) -> bool:
        assert self.process is not None and self.process.poll() is None, self.log_text()
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self, timeout: float = 30) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        return (self.data_dir / f"collector-{self.port}.log").read_text(errors="replace")


def agent(env: dict[str, str], *args: str, wait: bool = True,
          timeout: float = 120) -> subprocess.CompletedProcess[str] | subprocess.Popen[str]:
    """Run one of ``programs.py``'s agent programs in a fresh interpreter."""
    command = [sys.executable, str(PROGRAMS), *args]
    full_env = {**os.environ, **env}
    if not wait:
        return subprocess.Popen(command, env=full_env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    result = subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return result


def finish(process: subprocess.Popen[str], timeout: float = 120) -> str:
    """Wait for an agent started with ``wait=False``; its output, or its errors if it failed."""
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"agent failed ({process.returncode}):\n{out}\n{err}"
    return out


def new_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"
