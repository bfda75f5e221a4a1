"""Send stored runs to an OTLP/HTTP endpoint (protobuf), in requests split by size."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import aiohttp
import asyncpg
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from ..reads import NotFound
from ..schema import connect
from . import convention as c
from .spans import StoredRun, run_spans

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 4 * 1024 * 1024  # gRPC's default message limit, which many backends keep
SCOPE = InstrumentationScope(name="cmbagent-tracking")
RETRY_STATUSES = frozenset({429, 502, 503, 504})  # what OTLP/HTTP says to retry
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)
PROTOBUF = "application/x-protobuf"


class ExportError(RuntimeError):
    """The endpoint refused the spans or could not be reached; the message says which."""


@dataclass(frozen=True)
class Endpoint:
    """Where spans go: ``url`` ends in ``/v1/traces`` (added when missing), plus headers
    (a backend's credentials) and the ``service.name`` the spans are filed under."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    service_name: str = "cmbagent"

    @classmethod
    def parse(cls, url: str, headers: Iterable[str] = (), service_name: str = "cmbagent"
              ) -> Endpoint:
        """From the command line: ``headers`` as ``NAME=VALUE`` strings."""
        pairs = {}
        for header in headers:
            name, sep, value = header.partition("=")
            if not sep or not name.strip():
                raise ValueError(f"header {header!r}: write it as NAME=VALUE")
            pairs[name.strip()] = value.strip()
        base = url.rstrip("/")
        return cls(base if base.endswith("/v1/traces") else f"{base}/v1/traces", pairs,
                   service_name)


_RUN = "SELECT * FROM workflow_runs WHERE id = $1"
_SESSION = "SELECT * FROM sessions WHERE id = $1"
_NODES = "SELECT * FROM dag_nodes WHERE run_id = $1 ORDER BY depth, order_index"
_EDGES = "SELECT * FROM dag_edges WHERE run_id = $1"
_EVENTS = "SELECT * FROM execution_events WHERE run_id = $1 ORDER BY execution_order"
_COSTS = "SELECT * FROM cost_records WHERE run_id = $1"


async def load_run(connection: asyncpg.Connection, run: uuid.UUID) -> StoredRun:
    """All of one run's rows, read in one snapshot."""
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        row = await connection.fetchrow(_RUN, run)
        if row is None:
            raise NotFound(f"no run {run}; `cmbagent-collector runs` lists the stored runs")
        return StoredRun(
            run=row, session=await connection.fetchrow(_SESSION, row["session_id"]),
            nodes=await connection.fetch(_NODES, run), edges=await connection.fetch(_EDGES, run),
            events=await connection.fetch(_EVENTS, run), costs=await connection.fetch(_COSTS, run))


def requests(spans: list[Span], service_name: str,
             max_bytes: int = MAX_REQUEST_BYTES) -> Iterator[ExportTraceServiceRequest]:
    """The spans in export requests of at most ``max_bytes`` each (a bigger span goes alone)."""
    # Phoenix files spans under the project the resource names; others read service.name.
    resource = Resource(attributes=c.key_values({"service.name": service_name,
                                                 "openinference.project.name": service_name}))
    envelope = ExportTraceServiceRequest()
    envelope.resource_spans.add(resource=resource).scope_spans.add(scope=SCOPE)
    overhead = envelope.ByteSize() + 16  # plus each span's tag and length prefix, at most 6
    chunk: list[Span] = []
    size = overhead
    for span in spans:
        span_size = span.ByteSize() + 6
        if chunk and size + span_size > max_bytes:
            yield _request(resource, chunk)
            chunk, size = [], overhead
        chunk.append(span)
        size += span_size
    if chunk:
        yield _request(resource, chunk)


def _request(resource: Resource, spans: list[Span]) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    scope_spans = request.resource_spans.add(resource=resource).scope_spans.add(scope=SCOPE)
    scope_spans.spans.extend(spans)
    return request


async def send(session: aiohttp.ClientSession, endpoint: Endpoint,
               request: ExportTraceServiceRequest) -> None:
    """POST one request; retries what OTLP says is transient, raises :class:`ExportError`."""
    body = request.SerializeToString()
    headers = {**endpoint.headers, "Content-Type": PROTOBUF}
    for delay in (*RETRY_DELAYS, None):
        try:
            async with session.post(endpoint.url, data=body, headers=headers) as response:
                answer = await response.read()
                if response.status < 300:
                    _warn_partial(response.headers.get("Content-Type", ""), answer)
                    return
                problem = f"HTTP {response.status}: {answer[:300].decode(errors='replace')}"
                retry = response.status in RETRY_STATUSES
                wait = _retry_after(response.headers.get("Retry-After"), delay)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            problem, retry, wait = f"{type(exc).__name__}: {exc}", True, delay
        if not retry or wait is None:
            raise ExportError(f"{endpoint.url} refused {len(body)} bytes of spans ({problem})")
        log.warning("OTLP export to %s: %s; retrying in %.1fs", endpoint.url, problem, wait)
        await asyncio.sleep(wait)
    raise AssertionError("unreachable")  # the last delay is None: the loop raised


def _retry_after(header: str | None, default: float | None) -> float | None:
    if default is None or header is None:
        return default
    try:
        return min(float(header), 60.0)
    except ValueError:
        return default


def _warn_partial(content_type: str, answer: bytes) -> None:
    if not answer or PROTOBUF not in content_type:
        return
    response = ExportTraceServiceResponse.FromString(answer)
    if response.partial_success.rejected_spans:
        log.warning("the OTLP endpoint rejected %d spans: %s",
                    response.partial_success.rejected_spans,
                    response.partial_success.error_message)


async def export_runs(dsn: str, schema: str, runs: Iterable[uuid.UUID], endpoint: Endpoint, *,
                      content: bool = False, max_bytes: int = MAX_REQUEST_BYTES) -> int:
    """Send each run's ended spans to ``endpoint``; the number of spans sent."""
    sent = 0
    connection = await connect(dsn, schema, application_name="cmbagent-collector-export")
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            for run in runs:
                spans = run_spans(await load_run(connection, run), content=content)
                for request in requests(spans, endpoint.service_name, max_bytes):
                    await send(session, endpoint, request)
                sent += len(spans)
                log.info("exported run %s: %d spans to %s", run, len(spans), endpoint.url)
    finally:
        await connection.close()
    return sent
