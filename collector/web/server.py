"""The collector's one HTTP server: web view, JSON API, ``/livez``, ``/readyz``, ``/metrics``.

aiohttp runs on the caller's event loop (the daemon's uvloop), so readiness asks the database
directly and the read pool shares the loop with ingestion; no second server process.
Security, because agent content is untrusted input:

- The pages hold no data: one static shell and one script, which writes every value with
  ``textContent``. A strict Content-Security-Policy forbids inline script and every origin but
  this one; nothing is loaded from elsewhere.
- Read-only: GET routes only, and the read pool's sessions are read-only transactions (the
  daemon adds one POST, OTLP ingest's ``/v1/traces``, which writes through its store).
- A bind off loopback needs a token (``Settings`` refuses one without); the token comes as
  ``Authorization: Bearer``, or once as ``?token=`` which becomes an HttpOnly cookie.
  ``/livez``, ``/readyz`` and ``/metrics`` carry no agent content and stay open for probes.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from prometheus_client import CONTENT_TYPE_LATEST

from .. import reads
from ..metrics import Metrics
from ..schema import server_settings
from ..settings import DEFAULT_SCHEMA
from . import api

log = logging.getLogger(__name__)

Readiness = Callable[[], Awaitable[str | None]]  # None when ready, else why not
Routes = Callable[[web.Application], None]  # adds more routes (the daemon's OTLP ingest)

STATIC = Path(__file__).with_name("static")
PAGES = ("/", "/runs/{run}", "/runs/{run}/timeline", "/runs/{run}/events/{event}", "/compare",
         "/costs")
OPEN_PATHS = frozenset({"/livez", "/readyz", "/metrics"})
TOKEN_COOKIE = "cmbagent_token"
MAX_HEADER_BYTES = 64 * 1024  # longer header lines get 400 Bad Request
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


@asynccontextmanager
async def serving(bind: str, dsn: str, *, schema: str = DEFAULT_SCHEMA,
                  token: str | None = None,
                  readiness: Readiness | None = None,
                  metrics: Metrics | None = None,
                  routes: Routes | None = None) -> AsyncIterator[None]:
    """Serve the web view and the probes on ``bind`` (HOST:PORT) while the block runs.

    Without ``readiness`` (``cmbagent-collector ui``), ready means the database answers at the
    schema this collector reads. Without ``metrics`` there is no ``/metrics``.
    """
    pool = await asyncpg.create_pool(dsn, min_size=0, max_size=4,
                                      server_settings={**server_settings(schema),
                                                       **reads.READ_ONLY})
    app = make_app(pool, token=token, readiness=readiness or _schema_readiness(pool),
                   metrics=metrics, routes=routes)
    # Open event streams end with the run or the page; at shutdown they get a second, so a
    # SIGTERM still stops the collector promptly.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0,
                           max_line_size=MAX_HEADER_BYTES, max_field_size=MAX_HEADER_BYTES)
    await runner.setup()
    host, _, port = bind.rpartition(":")
    try:
        try:
            await web.TCPSite(runner, host.strip("[]") or "127.0.0.1", int(port)).start()
        except OSError as exc:
            raise SystemExit(f"cannot serve HTTP on {bind} ({exc.strerror}): give --http another "
                             "HOST:PORT (a second collector on this host needs its own), "
                             "or --http off") from None
        log.info("web view, API and probes on http://%s/", bind)
        yield
    finally:
        await runner.cleanup()
        await pool.close()


def make_app(pool: asyncpg.Pool, *, token: str | None, readiness: Readiness,
             metrics: Metrics | None, routes: Routes | None = None) -> web.Application:
    app = web.Application(
        middlewares=[_security_headers, _require_token(token), api.bad_parameters])
    app[api.POOL] = pool

    async def livez(request: web.Request) -> web.Response:
        return web.Response(text="alive\n")

    async def readyz(request: web.Request) -> web.Response:
        problem = await readiness()
        if problem is None:
            return web.Response(text="ready\n")
        return web.Response(status=503, text=f"not ready: {problem}\n")

    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    if metrics is not None:
        async def exposition(request: web.Request) -> web.Response:
            return web.Response(body=metrics.exposition(),
                                headers={"Content-Type": CONTENT_TYPE_LATEST})

        app.router.add_get("/metrics", exposition)
    for page in PAGES:
        app.router.add_get(page, _shell)
    app.router.add_static("/static", STATIC)
    api.add_routes(app.router)
    if routes is not None:
        routes(app)
    return app


async def _shell(request: web.Request) -> web.FileResponse:
    """Every page is the same shell; its script reads the address and fetches the data."""
    return web.FileResponse(STATIC / "index.html")


@web.middleware
async def _security_headers(request: web.Request,
                            handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                            ) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(SECURITY_HEADERS)
        raise
    response.headers.update(SECURITY_HEADERS)
    return response


def _require_token(token: str | None) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def check(request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> web.StreamResponse:
        if token is None or request.path in OPEN_PATHS:
            return await handler(request)
        given = request.query.get("token")
        if given is not None and _same(given, token):
            # Once in the address, then a cookie: the token leaves the address bar and history.
            query = {k: v for k, v in request.query.items() if k != "token"}
            response = web.HTTPSeeOther(str(request.rel_url.with_query(query)))
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict")
            raise response
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if _same(bearer, token) or _same(request.cookies.get(TOKEN_COOKIE, ""), token):
            return await handler(request)
        raise web.HTTPUnauthorized(text="this collector's web view needs its token: open "
                                        "/?token=TOKEN once, or send Authorization: Bearer TOKEN\n")

    return check


def _same(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode(), token.encode())


def _schema_readiness(pool: asyncpg.Pool) -> Readiness:
    from .. import schema

    head = schema.head_revision()

    async def readiness() -> str | None:
        try:
            async with pool.acquire(timeout=2.0) as connection:
                revision = None
                if await connection.fetchval("SELECT to_regclass('alembic_version')"):
                    revision = await connection.fetchval("SELECT version_num FROM alembic_version")
        except Exception as exc:
            return f"database unreachable ({type(exc).__name__}: {exc})"
        if revision != head:
            return f"schema at revision {revision}, this collector reads {head}"
        return None

    return readiness


class _QuietBadRequests(logging.Filter):
    """A malformed request (a header over the limit, garbage bytes) is the client's error: one
    warning line for it, not a traceback; aiohttp has already answered 400."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, BadHttpMessage):
            record.msg, record.args = "refused a malformed HTTP request: %s", (error.message,)
            record.exc_info, record.exc_text, record.levelno = None, None, logging.WARNING
            record.levelname = "WARNING"
        return True


logging.getLogger("aiohttp.server").addFilter(_QuietBadRequests())
