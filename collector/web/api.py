"""The JSON API behind the pages, in the shapes of the CLI's ``--json`` (``collector.reads``).

Routes, parameters and errors: docs/web.md. Every read goes through the app's read-only pool;
a wrong parameter is a 400, an unknown run or event a 404, a database that is away or has no
tables yet a 503, each as ``{"error": "..."}`` saying what to do.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import asyncpg
from aiohttp import web

from .. import reads

POOL = web.AppKey("pool", asyncpg.Pool)
MAX_PAGE = 1000
STREAM_INTERVAL = 1.0  # seconds between looks at a running run


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/runs", runs)
    router.add_get("/api/runs/{run}", tree)
    router.add_get("/api/runs/{run}/stream", stream)
    router.add_get("/api/runs/{run}/events", events)
    router.add_get("/api/runs/{run}/events/{event}", event)
    router.add_get("/api/costs", costs)


class BadParameter(ValueError):
    """A query parameter is unusable; the message says which and what it takes."""


async def runs(request: web.Request) -> web.Response:
    query = request.query
    page = reads.RunFilter(
        limit=_int(query, "limit", 20, maximum=MAX_PAGE), status=query.get("status") or None,
        text=query.get("q") or None, user=query.get("user") or None,
        since=_time(query, "since"), until=_time(query, "until"), before=_before(query))
    return await _answer(request, lambda c: reads.runs(c, page))


async def tree(request: web.Request) -> web.Response:
    run = _uuid(request.match_info["run"], "run")
    return await _answer(request, lambda c: reads.tree(c, run))


async def events(request: web.Request) -> web.Response:
    run, query = _uuid(request.match_info["run"], "run"), request.query
    after, limit = _int(query, "after", 0, minimum=0), _int(query, "limit", 50, maximum=MAX_PAGE)
    return await _answer(request, lambda c: reads.events(
        c, run, node=query.get("node") or None, event_type=query.get("type") or None,
        after=after, limit=limit))


async def event(request: web.Request) -> web.Response:
    run = _uuid(request.match_info["run"], "run")
    event_id = _uuid(request.match_info["event"], "event")
    return await _answer(request, lambda c: reads.event(c, run, event_id))


async def costs(request: web.Request) -> web.Response:
    run = _uuid(request.query["run"], "run") if request.query.get("run") else None
    days = _int(request.query, "days", 30)
    return await _answer(request, lambda c: reads.costs(c, run, days))


async def stream(request: web.Request) -> web.StreamResponse:
    """The run's tree as server-sent events: now, then on every change while it runs."""
    run = _uuid(request.match_info["run"], "run")
    pool = request.app[POOL]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    last = ""
    try:
        while True:
            async with pool.acquire() as connection:
                try:
                    current = await reads.tree(connection, run)
                except reads.NotFound as exc:
                    await response.write(f"event: error\ndata: {json.dumps(str(exc))}\n\n"
                                         .encode())
                    return response
            text = json.dumps(current)
            if text != last:
                await response.write(f"data: {text}\n\n".encode())
                last = text
            if current["run"]["status"] != "running":
                await response.write(b"event: end\ndata: {}\n\n")
                return response
            await asyncio.sleep(STREAM_INTERVAL)
    except ConnectionResetError:  # the page went away: nothing to tell anyone
        return response


async def _answer(request: web.Request, read: reads.Read[Any]) -> web.Response:
    try:
        async with request.app[POOL].acquire() as connection:
            result = await read(connection)
    except reads.NotFound as exc:
        return _error(404, str(exc))
    except asyncpg.UndefinedTableError:
        return _error(503, "this database has no cmbagent-tracking tables yet: run "
                           "`cmbagent-collector migrate` (or `serve`, which migrates) against it")
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresConnectionError) as exc:
        return _error(503, f"the database does not answer ({type(exc).__name__}: {exc}); "
                           "/readyz says when it is back")
    return web.json_response(result)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def bad_parameters(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
    """A :class:`BadParameter` anywhere in a handler is a 400 with its message."""
    try:
        return await handler(request)
    except BadParameter as exc:
        return _error(400, str(exc))


def _uuid(text: str, name: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise BadParameter(f"{name} {text!r} is not an id; /api/runs lists the runs") from None


def _int(query: Any, name: str, default: int, *, minimum: int = 1,
         maximum: int = 2**62) -> int:
    text = query.get(name)
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadParameter(f"{name} must be a whole number, not {text!r}") from None
    if not minimum <= value <= maximum:
        raise BadParameter(f"{name} must be between {minimum} and {maximum}, not {value}")
    return value


def _time(query: Any, name: str) -> datetime | None:
    text = query.get(name)
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise BadParameter(f"{name} must be an ISO date or time (2025-06-30 or "
                           f"2025-06-30T12:00:00+00:00), not {text!r}") from None
    return value if value.tzinfo else value.astimezone()


def _before(query: Any) -> tuple[datetime, uuid.UUID] | None:
    text = query.get("before")
    if not text:
        return None
    started, _, run = text.rpartition(",")
    when = _time({"before": started}, "before")
    if when is None:
        raise BadParameter("before must be STARTED_AT,ID of the last run of the previous page")
    return when, _uuid(run, "before's run")
