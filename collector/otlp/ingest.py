"""OTLP/HTTP trace ingest: ``POST /v1/traces`` on the collector's HTTP server.

- Protobuf (``application/x-protobuf``) or JSON (``application/json``), optionally gzip.
- Spans become the pipeline's records (``records``) and go through ``pipeline.to_row`` and the
  store like ZeroMQ frames: a span that cannot be read is quarantined alone, a body that cannot
  be read is quarantined whole and answered 400.
- 200 only once the rows are committed; 503 with Retry-After while the requests in flight are
  at their limit or the database is away (OTLP exporters retry both). Ids are stable, so a
  resent request stores nothing twice.
- The web view's rule applies: loopback, or the token (``Authorization: Bearer``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import zlib
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from prometheus_client import Counter

from ..metrics import Metrics
from ..pipeline import Decoded, Quarantined, Reject, to_row
from ..store import Store
from .export import PROTOBUF
from .records import BadSpan, agent_nodes, span_records, spans

log = logging.getLogger(__name__)

JSON = "application/json"
MAX_BODY_BYTES = 8 * 1024 * 1024  # twice what exporters send at most (gRPC's 4 MiB)
MAX_IN_FLIGHT = 4
BODY_SECONDS = 30
RETRY_AFTER_SECONDS = "2"
_ID_FIELDS = frozenset({"traceId", "spanId", "parentSpanId"})


class Malformed(ValueError):
    """A body that is not an OTLP trace request; the message says what is wrong."""


class OtlpIngest:
    """The ``/v1/traces`` handler, writing through the daemon's store and metrics."""

    def __init__(self, store: Store, metrics: Metrics, *, max_body_bytes: int = MAX_BODY_BYTES,
                 max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.store = store
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self._slots = asyncio.Semaphore(max_in_flight)
        self.requests = Counter("cmbagent_otlp_requests", "OTLP/HTTP trace requests, by outcome",
                                ["outcome"], registry=metrics.registry)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/traces", self.traces)

    async def traces(self, request: web.Request) -> web.Response:
        if request.content_type not in (PROTOBUF, JSON):
            return self._refuse(415, "unsupported_type", f"Content-Type {request.content_type!r}: "
                                f"send {PROTOBUF} or {JSON}")
        if self._slots.locked():
            return self._busy("requests in flight at their limit")
        async with self._slots:
            try:
                # A slot is held while the body arrives: a client that stalls loses it.
                body = await asyncio.wait_for(self._body(request), BODY_SECONDS)
            except asyncio.TimeoutError:
                return self._refuse(408, "timeout", f"the body took over {BODY_SECONDS} s")
            except web.HTTPRequestEntityTooLarge:
                return self._refuse(413, "oversize", f"the body is over {self.max_body_bytes} "
                                    "bytes: send fewer spans per request")
            is_json = request.content_type == JSON
            try:
                decoded = decode_request(body, is_json)
            except Malformed as exc:
                if not await self._write(_refused(body, str(exc))):
                    return self._busy("the database is unavailable")
                return self._refuse(400, "malformed", f"not an OTLP trace request: {exc}")
            if not await self._write(decoded):
                return self._busy("the database is unavailable")
        self.requests.labels("stored").inc()
        return _answer(len(decoded.quarantined), is_json)

    async def _body(self, request: web.Request) -> bytes:
        """The body, decompressed, refusing more than ``max_body_bytes`` either way."""
        if (request.content_length or 0) > self.max_body_bytes:
            raise web.HTTPRequestEntityTooLarge(self.max_body_bytes, request.content_length or 0)
        chunks, size = [], 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > self.max_body_bytes:
                raise web.HTTPRequestEntityTooLarge(self.max_body_bytes, size)
            chunks.append(chunk)
        body = b"".join(chunks)
        if request.headers.get("Content-Encoding", "identity") == "gzip":
            inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                body = inflate.decompress(body, self.max_body_bytes + 1)
            except zlib.error:
                body = b"\xff not gzip"  # quarantined as malformed, with the reason below
            if len(body) > self.max_body_bytes or inflate.unconsumed_tail:
                raise web.HTTPRequestEntityTooLarge(self.max_body_bytes, len(body))
        return body

    async def _write(self, decoded: Decoded) -> bool:
        """Commit; ``False`` when the database cannot take it now (the client retries)."""
        self.metrics.decoded(decoded)
        started = time.monotonic()
        try:
            result = await self.store.write([decoded])
        except Exception as exc:
            self.metrics.database_errors.labels(type(exc).__name__).inc()
            log.warning("cannot store OTLP spans (%s: %s); answered 503", type(exc).__name__, exc)
            return False
        self.metrics.committed([decoded], result, time.monotonic() - started, after_errors=False)
        return True

    def _refuse(self, status: int, outcome: str, text: str) -> web.Response:
        self.requests.labels(outcome).inc()
        return web.Response(status=status, text=text + "\n")

    def _busy(self, why: str) -> web.Response:
        self.requests.labels("busy").inc()
        return web.Response(status=503, text=f"busy: {why}; retry later\n",
                            headers={"Retry-After": RETRY_AFTER_SECONDS})


def decode_request(body: bytes, is_json: bool) -> Decoded:
    """Rows and quarantined spans of one request body; :class:`Malformed` if it is none."""
    request = _parse(body, is_json)
    decoded = Decoded(b"", None)
    agents = agent_nodes(request)
    for span, resource in spans(request):
        try:
            # All of a span's rows or none: a span half stored would read as another span.
            records = span_records(span, resource, agents)
            decoded.rows.extend([to_row(record) for record in records])
        except (BadSpan, Reject) as exc:
            reason = exc.reason if isinstance(exc, Reject) else "otlp_bad_span"
            decoded.quarantined.append(Quarantined(reason, str(exc)[:2000],
                                                   span.SerializeToString(), "otlp"))
    return decoded


def _parse(body: bytes, is_json: bool) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    try:
        if is_json:
            json_format.ParseDict(_ids_as_base64(json.loads(body)), request)
        else:
            request.ParseFromString(body)
    except (DecodeError, json_format.ParseError, ValueError, RecursionError) as exc:
        raise Malformed(f"{type(exc).__name__}: {exc}"[:500]) from None
    return request


def _ids_as_base64(value: Any) -> Any:
    """OTLP/JSON writes trace and span ids in hex; protobuf's JSON mapping reads base64."""
    if isinstance(value, dict):
        return {k: _hex_to_base64(v) if k in _ID_FIELDS and isinstance(v, str)
                else _ids_as_base64(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ids_as_base64(v) for v in value]
    return value


def _hex_to_base64(text: str) -> str:
    try:
        return base64.b64encode(bytes.fromhex(text)).decode()
    except ValueError:
        raise Malformed(f"{text!r} is not a hex trace or span id") from None


def _refused(body: bytes, reason: str) -> Decoded:
    return Decoded(b"", None, quarantined=[Quarantined("otlp_malformed", reason, body, "otlp")])


def _answer(rejected: int, is_json: bool) -> web.Response:
    response = ExportTraceServiceResponse()
    if rejected:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = (
            f"{rejected} spans were quarantined; the collector's quarantine table says why")
    if is_json:
        return web.json_response(json_format.MessageToDict(response))
    return web.Response(body=response.SerializeToString(), content_type=PROTOBUF)
