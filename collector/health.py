"""The health and metrics endpoint: ``/livez``, ``/readyz``, ``/metrics``, over plain HTTP.

Three fixed GET routes on the daemon's own event loop, so readiness can ask the database
directly; a web framework would be the only dependency here that serves no other purpose.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST

from .metrics import Metrics

log = logging.getLogger(__name__)

Readiness = Callable[[], Awaitable[str | None]]  # None when ready, else why not


async def serve_health(bind: str, metrics: Metrics, readiness: Readiness) -> asyncio.Server:
    host, _, port = bind.rpartition(":")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            method, path, *_ = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            status, content_type, body = await _respond(method, path, metrics, readiness)
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host or "127.0.0.1", int(port))
    log.info("health and metrics on http://%s/ (livez, readyz, metrics)", bind)
    return server


async def _respond(method: str, path: str, metrics: Metrics,
                   readiness: Readiness) -> tuple[str, str, bytes]:
    if method != "GET":
        return "405 Method Not Allowed", "text/plain", b"only GET\n"
    if path == "/livez":
        return "200 OK", "text/plain", b"alive\n"
    if path == "/readyz":
        problem = await readiness()
        if problem is None:
            return "200 OK", "text/plain", b"ready\n"
        return "503 Service Unavailable", "text/plain", f"not ready: {problem}\n".encode()
    if path == "/metrics":
        return "200 OK", CONTENT_TYPE_LATEST, metrics.exposition()
    return "404 Not Found", "text/plain", b"try /livez, /readyz or /metrics\n"
