"""``serve --export-otlp URL``: send each run to an OTLP endpoint once it has ended.

- Asynchronous and apart from ingest: a database connection of its own, the spans built in a worker
  thread, one run in memory at a time; ingest never waits for it.
- The cursor is stored (``otlp_exports``: per endpoint, each run sent and its highest
  ``execution_order``): after a restart or while the endpoint is unreachable nothing is skipped,
  and a run that receives events after it was sent (a late spool) is sent again. Sending twice
  is harmless: span ids are stable.
- Counters in ``/metrics``: runs and spans sent, failed attempts, runs waiting.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import aiohttp
import asyncpg
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client import Counter, Gauge

from ..metrics import Metrics
from ..schema import connect
from .export import Endpoint, ExportError, load_run, requests, send
from .spans import StoredRun, run_spans

log = logging.getLogger(__name__)

POLL_SECONDS = 2.0
MAX_BACKOFF_SECONDS = 60.0
BATCH_RUNS = 20

# Ended runs this endpoint has not been sent, or has been sent with fewer events than now.
_DUE = """
SELECT r.id FROM workflow_runs r
LEFT JOIN otlp_exports x ON x.endpoint = $1 AND x.run_id = r.id
WHERE r.status NOT IN ('running', 'pending')
  AND (x.run_id IS NULL OR EXISTS (SELECT 1 FROM execution_events e
                                   WHERE e.run_id = r.id AND e.execution_order > x.exported_order))
ORDER BY r.completed_at NULLS LAST, r.id LIMIT $2
"""
_SENT = """
INSERT INTO otlp_exports (endpoint, run_id, exported_order) VALUES ($1, $2, $3)
ON CONFLICT (endpoint, run_id) DO UPDATE
SET exported_order = GREATEST(otlp_exports.exported_order, EXCLUDED.exported_order),
    exported_at = now()
"""


class Follower:
    """Follows the store's ended runs and sends them to one endpoint."""

    def __init__(self, dsn: str, schema: str, endpoint: Endpoint, metrics: Metrics, *,
                 content: bool = False, poll_seconds: float = POLL_SECONDS) -> None:
        self.dsn = dsn
        self.schema = schema
        self.endpoint = endpoint
        self.content = content
        self.poll_seconds = poll_seconds
        registry = metrics.registry
        self.runs_sent = Counter("cmbagent_otlp_export_runs", "Runs sent to the OTLP endpoint",
                                 registry=registry)
        self.spans_sent = Counter("cmbagent_otlp_export_spans",
                                  "Spans sent to the OTLP endpoint", registry=registry)
        self.failures = Counter("cmbagent_otlp_export_failures",
                                "Failed attempts to send a run (it is sent again later)",
                                registry=registry)
        self.waiting = Gauge("cmbagent_otlp_export_waiting_runs",
                             f"Ended runs not yet sent (counted up to {BATCH_RUNS})",
                             registry=registry)

    async def run(self) -> None:
        """Until cancelled: send what is due, then look again; back off while failing."""
        backoff = self.poll_seconds
        connection: asyncpg.Connection | None = None
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            try:
                while True:
                    try:
                        if connection is None or connection.is_closed():
                            connection = await connect(
                                self.dsn, self.schema,
                                application_name="cmbagent-collector-export")
                        await self._send_due(connection, session)
                        backoff = self.poll_seconds
                    except (ExportError, OSError, asyncpg.PostgresError,
                            asyncpg.InterfaceError) as exc:
                        self.failures.inc()
                        backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                        log.warning("OTLP export to %s: %s; trying again in %.0fs",
                                    self.endpoint.url, exc, backoff)
                    await asyncio.sleep(backoff)
            finally:
                if connection is not None:
                    await connection.close()

    async def _send_due(self, connection: asyncpg.Connection,
                        session: aiohttp.ClientSession) -> None:
        due = await connection.fetch(_DUE, self.endpoint.url, BATCH_RUNS)
        self.waiting.set(len(due))
        for row in due:
            await self._send_run(connection, session, row["id"])
            self.waiting.dec()

    async def _send_run(self, connection: asyncpg.Connection, session: aiohttp.ClientSession,
                        run: uuid.UUID) -> None:
        stored = await load_run(connection, run)
        # Mapping and encoding are CPU work: a thread keeps the event loop free for ingest.
        spans, chunks = await asyncio.to_thread(self._encode, stored)
        for request in chunks:
            await send(session, self.endpoint, request)
        last = max((e["execution_order"] for e in stored.events), default=0)
        await connection.execute(_SENT, self.endpoint.url, run, last)
        self.runs_sent.inc()
        self.spans_sent.inc(spans)
        log.info("exported run %s: %d spans to %s", run, spans, self.endpoint.url)

    def _encode(self, stored: StoredRun) -> tuple[int, list[ExportTraceServiceRequest]]:
        spans = run_spans(stored, content=self.content)
        return len(spans), list(requests(spans, self.endpoint.service_name))
