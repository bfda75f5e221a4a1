"""OpenTelemetry both ways, through real collectors on real databases: the example workflow
exported over OTLP into a second collector's ingest comes back as the same tree; hostile OTLP
requests get clear HTTP errors or quarantine, and nothing else is lost."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from collector import reads
from collector.otlp import convention
from collector.otlp.export import requests
from collector.otlp.spans import run_spans
from collector.schema import connect

from .conftest import migrated_database
from .helpers.support import (
    CollectorProcess,
    agent,
    execute,
    fetch,
    fetchval,
    free_port,
    run_async,
    wait_for,
)
from .test_workflow import example_run  # noqa: F401  (a fixture)

PROTOBUF = "application/x-protobuf"


@pytest.fixture
def second_database(postgres_admin: str, template_database: str) -> Iterator[str]:
    with migrated_database(postgres_admin, template_database, "cmbtest_otlp") as dsn:
        yield dsn


def post(url: str, body: bytes, content_type: str = PROTOBUF,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": content_type, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def export(dsn: str, run: uuid.UUID, url: str, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "collector", "--dsn", dsn, "export", str(run),
                             "--otlp", url, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def stored(dsn: str, run: uuid.UUID) -> dict[str, Any]:
    """The run as the read side shows it, plus every event and cost row."""
    async def read() -> dict[str, Any]:
        connection = await connect(dsn)
        try:
            events = [{k: v for k, v in dict(r).items() if k != "execution_order"}
                      for r in await connection.fetch(
                          "SELECT * FROM execution_events WHERE run_id = $1 ORDER BY id", run)]
            costs = [dict(r) for r in await connection.fetch(
                "SELECT * FROM cost_records WHERE run_id = $1 ORDER BY id", run)]
            tree = await reads.tree(connection, run)
            return {"run": tree["run"], "nodes": _flat(tree["nodes"]), "totals": tree["totals"],
                    "edges": sorted(tree["edges"], key=lambda e: (e["from"], e["to"])),
                    "outside_nodes": tree["outside_nodes"], "events": events, "costs": costs,
                    "session": dict(await connection.fetchrow(
                        "SELECT id, name FROM sessions s WHERE id = "
                        "(SELECT session_id FROM workflow_runs WHERE id = $1)", run))}
        finally:
            await connection.close()

    return run_async(read())


def _flat(nodes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The tree's nodes by id, each with its children's ids in order."""
    flat = {}
    for node in nodes:
        flat[node["id"]] = {**node, "children": [child["id"] for child in node["children"]]}
        flat.update(_flat(node["children"]))
    return flat


def counts(dsn: str) -> tuple[int, ...]:
    return tuple(fetchval(dsn, f"SELECT count(*) FROM {table}") for table in (
        "sessions", "workflow_runs", "dag_nodes", "dag_edges", "execution_events",
        "cost_records", "quarantine"))


def test_export_into_our_own_ingest_rebuilds_the_same_run(
        example_run: tuple[str, uuid.UUID, str], second_database: str, tmp_path: Path) -> None:
    dsn, run, _ = example_run
    # Costs that are not one per LLM call: a second one on a call, and one outside any event.
    execute(dsn, f"""INSERT INTO cost_records (run_id, id, session_id, node_id, event_id, model,
                     agent_name, prompt_tokens, completion_tokens, total_tokens, cost_usd,
                     "timestamp")
                     SELECT run_id, gen_random_uuid(), session_id, node_id, event_id, 'retry-model',
                            agent_name, 1, 2, 3, 0.5, "timestamp" + interval '1 ms'
                     FROM cost_records WHERE run_id = '{run}' AND event_id IS NOT NULL LIMIT 1""",
            f"""INSERT INTO cost_records (run_id, id, session_id, model, total_tokens, "timestamp")
                SELECT id, gen_random_uuid(), session_id, 'batch-model', 7, started_at
                FROM workflow_runs WHERE id = '{run}'""")
    target = CollectorProcess(second_database, tmp_path / "target", extra=("--no-migrate",)).start()
    try:
        out = export(dsn, run, f"http://{target.http}", "--content")
        assert "exported 1 run(s)" in out
        original, copy = stored(dsn, run), stored(second_database, run)
        for node, fields in original["nodes"].items():
            assert copy["nodes"].get(node) == fields
        assert copy == original
        before = counts(second_database)
        assert before[-1] == 0  # nothing quarantined

        export(dsn, run, f"http://{target.http}/v1/traces", "--content")  # again: no duplicates
        assert counts(second_database) == before
        assert stored(second_database, run) == stored(dsn, run)
        assert target.alive()
    finally:
        target.kill()


def test_export_maps_the_conventions_and_leaves_content_out_unless_asked(
        example_run: tuple[str, uuid.UUID, str]) -> None:
    dsn, run, _ = example_run

    async def spans_of(content: bool) -> list[Span]:
        from collector.otlp.export import load_run

        connection = await connect(dsn)
        try:
            return run_spans(await load_run(connection, run), content=content)
        finally:
            await connection.close()

    spans = run_async(spans_of(False))
    attrs = {s.span_id: convention.attributes(s.attributes) for s in spans}
    by_id = {s.span_id: s for s in spans}
    assert {s.trace_id for s in spans} == {run.bytes}
    assert len(by_id) == len(spans)  # one span per row, ids unique
    root = [s for s in spans if not s.parent_span_id]
    assert [s.name for s in root] == ["invoke_workflow"]
    assert all(s.parent_span_id in by_id for s in spans if s.parent_span_id)
    assert not any(convention.INPUT_VALUE in a or convention.OUTPUT_VALUE in a
                   for a in attrs.values())
    session = str(fetchval(dsn, "SELECT session_id FROM workflow_runs WHERE id = $1", run))
    assert {a[convention.SESSION] for a in attrs.values()} == {session}
    assert {a[convention.CONVERSATION] for a in attrs.values()} == {session}

    def named(prefix: str) -> list[Span]:
        return [s for s in spans if s.name.startswith(prefix)]

    assert [s.name for s in named("plan")] == ["plan"]
    llm = named("chat ")
    assert len(llm) == fetchval(dsn, "SELECT count(*) FROM execution_events WHERE run_id = $1 "
                                "AND event_type = 'llm_call'", run)
    for span in llm:
        a = attrs[span.span_id]
        assert (a[convention.OPERATION], a[convention.SPAN_KIND]) == ("chat", "LLM")
        assert span.kind == Span.SPAN_KIND_CLIENT
        assert a[convention.INPUT_TOKENS] + a[convention.OUTPUT_TOKENS] \
            == a[convention.OI_TOTAL_TOKENS] > 0
    tokens = sum(attrs[s.span_id].get(convention.OI_TOTAL_TOKENS, 0) for s in spans)
    assert tokens == fetchval(dsn, "SELECT sum(total_tokens) FROM cost_records WHERE run_id = $1",
                              run)
    agents = named("invoke_agent ")
    assert agents and all(attrs[s.span_id][convention.SPAN_KIND] == "AGENT" for s in agents)
    tools = named("execute_tool ")
    assert {attrs[s.span_id][convention.SPAN_KIND] for s in tools} == {"TOOL"}
    assert any(convention.TRANSFER_TO in attrs[s.span_id] for s in tools)  # handoffs

    retry = next(s for s in spans if s.name == "step_3_retry_1")
    failed = next(s for s in spans if s.name == "step_3")
    assert failed.status.code == failed.status.STATUS_CODE_ERROR
    assert any(link.span_id == failed.span_id and convention.attributes(link.attributes)[
        convention.LINK] == "retry_of" for link in retry.links)

    with_content = run_async(spans_of(True))
    assert any(convention.INPUT_VALUE in convention.attributes(s.attributes)
               for s in with_content)
    # Split by bytes: every request under the limit, every span sent once.
    chunks = list(requests(with_content, "cmbagent", max_bytes=20_000))
    assert len(chunks) > 1 and all(r.ByteSize() <= 20_000 for r in chunks)
    assert sum(len(r.resource_spans[0].scope_spans[0].spans) for r in chunks) == len(with_content)


def _span(trace: bytes, span: bytes, parent: bytes = b"", name: str = "work",
          attributes: dict[str, Any] | None = None) -> Span:
    now = time.time_ns()
    return Span(trace_id=trace, span_id=span, parent_span_id=parent, name=name,
                start_time_unix_nano=now - 5_000_000, end_time_unix_nano=now,
                attributes=convention.key_values(attributes or {}))


def _body(*spans: Span) -> bytes:
    request = ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.extend(spans)
    return request.SerializeToString()


def _quarantine(dsn: str) -> dict[str, int]:
    return {r["reason"]: r["n"] for r in fetch(
        dsn, "SELECT reason, count(*) AS n FROM quarantine GROUP BY reason")}


def test_hostile_otlp_requests_get_clear_errors_or_quarantine_and_nothing_else_is_lost(
        collector: CollectorProcess, database: str) -> None:
    url = f"http://{collector.http}/v1/traces"
    trace = uuid.uuid4().bytes

    # Wrong content type: 415 saying what to send; nothing stored.
    status, _, text = post(url, b"{}", "text/plain")
    assert status == 415 and b"application/x-protobuf" in text

    # Not protobuf: 400 saying so; the body is quarantined whole.
    status, _, text = post(url, b"\xff\xfe garbage \x00" * 10)
    assert status == 400 and b"not an OTLP trace request" in text
    status, _, text = post(url, b'{"resourceSpans": [', "application/json")
    assert status == 400
    assert _quarantine(database) == {"otlp_malformed": 2}

    # Oversize: 413 before the body is read; gzip that inflates past the limit as well.
    status, _, text = post(url, b"\x00" * (9 * 1024 * 1024))
    assert status == 413 and b"fewer spans" in text
    status, _, _ = post(url, gzip.compress(b"\x00" * (9 * 1024 * 1024)),
                        headers={"Content-Encoding": "gzip"})
    assert status == 413

    # A good agent span, a child whose parent never arrives, a span with a broken trace id, one
    # starting at zero and one whose session id is a number: the good ones are stored, each bad
    # one is quarantined alone, and the answer's partial_success counts them.
    agent = _span(trace, b"\x01" * 8, name="invoke_agent planner",
                  attributes={"gen_ai.operation.name": "invoke_agent",
                              "gen_ai.agent.name": "planner"})
    llm = _span(trace, b"\x02" * 8, b"\x01" * 8, "chat gpt-4o",
                {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o",
                   "gen_ai.usage.input_tokens": 12, "gen_ai.usage.output_tokens": 5})
    orphan = _span(trace, b"\x03" * 8, b"\x09" * 8, "orphan")
    broken = _span(b"\x00" * 16, b"\x04" * 8, name="no trace")
    epoch = _span(trace, b"\x05" * 8, name="at zero")
    epoch.start_time_unix_nano = 0
    own = _span(trace, b"\x06" * 8, name="ours", attributes={
        "cmbagent.record": "event", "cmbagent.id": "not a uuid", "session.id": 7})
    status, _, answer = post(url, _body(agent, llm, orphan, broken, epoch, own))
    assert status == 200
    assert ExportTraceServiceResponse.FromString(answer).partial_success.rejected_spans == 3
    quarantined = _quarantine(database)
    assert quarantined == {"otlp_malformed": 2, "otlp_bad_span": 3}

    run = uuid.UUID(bytes=trace)
    events = {r["event_subtype"]: dict(r) for r in fetch(
        database, "SELECT * FROM execution_events WHERE run_id = $1", run)}
    assert set(events) == {"invoke_agent planner", "chat gpt-4o", "orphan"}
    assert events["chat gpt-4o"]["event_type"] == "llm_call"
    assert events["chat gpt-4o"]["parent_event_id"] == events["invoke_agent planner"]["id"]
    assert events["orphan"]["parent_event_id"] is not None  # kept, waiting for its parent
    node = fetch(database, "SELECT * FROM dag_nodes WHERE run_id = $1", run)
    assert [(n["node_type"], n["agent"]) for n in node] == [("sub_agent", "planner")]
    assert events["chat gpt-4o"]["node_id"] == node[0]["id"]
    cost = fetch(database, "SELECT * FROM cost_records WHERE run_id = $1", run)
    assert [(c["model"], c["total_tokens"]) for c in cost] == [("gpt-4o", 17)]

    # The same spans again, as OTLP/JSON this time: nothing new.
    before = counts(database)
    as_json = {"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": trace.hex(), "spanId": (b"\x02" * 8).hex(), "parentSpanId": (b"\x01" * 8).hex(),
        "name": "chat gpt-4o", "startTimeUnixNano": str(llm.start_time_unix_nano),
        "endTimeUnixNano": str(llm.end_time_unix_nano), "attributes": [
            {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
            {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4o"}},
            {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "12"}},
            {"key": "gen_ai.usage.output_tokens", "value": {"intValue": "5"}}]}]}]}]}
    status, _, answer = post(url, json.dumps(as_json).encode(), "application/json")
    assert status == 200 and json.loads(answer) == {}
    status, _, _ = post(url, _body(agent, llm, orphan))
    assert status == 200
    assert counts(database) == before

    # The daemon is alive and its metrics count what happened.
    assert collector.alive()
    with urllib.request.urlopen(f"http://{collector.http}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    for outcome in ("unsupported_type", "malformed", "oversize", "stored"):
        assert f'cmbagent_otlp_requests_total{{outcome="{outcome}"}}' in metrics


def test_ingest_answers_503_with_retry_after_when_its_requests_in_flight_are_full(
        collector: CollectorProcess, database: str) -> None:
    host, port = collector.http.split(":")
    body = _body(_span(uuid.uuid4().bytes, b"\x01" * 8))
    slow = []
    for _ in range(4):  # each holds a slot while its body is still on the way
        sock = socket.create_connection((host, int(port)))
        sock.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     b"application/x-protobuf\r\nContent-Length: %d\r\n\r\n" % len(body)
                     + body[:5])
        slow.append(sock)
    try:
        url = f"http://{collector.http}/v1/traces"
        _, headers, text = wait_for(lambda: (r := post(url, body))[0] == 503 and r)
        assert headers["Retry-After"] == "2" and b"retry later" in text
    finally:
        for sock in slow:
            sock.sendall(body[5:])
            assert sock.recv(1024).startswith(b"HTTP/1.1 200")
            sock.close()
    assert post(f"http://{collector.http}/v1/traces", body)[0] == 200


def test_with_a_token_ingest_needs_it(database: str, tmp_path: Path) -> None:
    collector = CollectorProcess(database, tmp_path, extra=(
        "--no-migrate", "--http-token", "s3cret")).start()
    try:
        url = f"http://{collector.http}/v1/traces"
        body = _body(_span(uuid.uuid4().bytes, b"\x01" * 8))
        assert post(url, body)[0] == 401
        assert post(url, body, headers={"Authorization": "Bearer wrong"})[0] == 401
        assert post(url, body, headers={"Authorization": "Bearer s3cret"})[0] == 200
        assert fetchval(database, "SELECT count(*) FROM execution_events") == 1
    finally:
        collector.kill()


#: An AG2 conversation traced by AG2's own OpenTelemetry instrumentation (classic
#: ``autogen.opentelemetry``), exported over OTLP/HTTP to the collector; our shim is off.
AG2_TELEMETRY = """
import sys
sys.path.insert(0, {examples!r})
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from autogen.opentelemetry import instrument_agent, instrument_llm_wrapper
from offline_llm import ScriptedAgent

provider = TracerProvider(resource=Resource.create({{"service.name": "ag2-telemetry"}}))
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint={endpoint!r})))
instrument_llm_wrapper(tracer_provider=provider)
researcher = ScriptedAgent("researcher", script=["A flat one; H0 = 70.", "Agreed."])
critic = ScriptedAgent("critic", script=["Which prior did you use?", "Fine."])
for agent in (researcher, critic):
    instrument_agent(agent, tracer_provider=provider)
researcher.initiate_chat(critic, message="Estimate H0.", max_turns=2)
provider.shutdown()  # flushes the batch
"""


def test_ag2s_own_telemetry_lands_as_a_run_with_its_agents_and_llm_calls(
        collector: CollectorProcess, database: str) -> None:
    examples = str(Path(__file__).resolve().parent.parent / "examples")
    program = AG2_TELEMETRY.format(examples=examples,
                                   endpoint=f"http://{collector.http}/v1/traces")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            timeout=120, env={k: v for k, v in os.environ.items()
                                              if k != "CMBAGENT_COLLECTOR_URL"})
    assert result.returncode == 0, result.stderr[-3000:]

    runs = fetch(database, "SELECT * FROM workflow_runs")
    assert len(runs) == 1 and runs[0]["status"] == "completed"
    run = runs[0]["id"]
    events = fetch(database, "SELECT * FROM execution_events WHERE run_id = $1", run)
    types = Counter(e["event_type"] for e in events)
    assert types["agent_call"] >= 2 and types["llm_call"] >= 2, types
    ids = {e["id"] for e in events}
    assert all(e["parent_event_id"] in ids for e in events if e["parent_event_id"])
    assert sum(e["parent_event_id"] is None for e in events) == 1  # the conversation's root
    agents = {n["agent"] for n in fetch(
        database, "SELECT agent FROM dag_nodes WHERE run_id = $1 AND node_type = 'sub_agent'",
        run)}
    assert agents == {"researcher", "critic"}
    costs = fetch(database, "SELECT * FROM cost_records WHERE run_id = $1", run)
    assert len(costs) == types["llm_call"] and all(c["total_tokens"] > 0 for c in costs)
    assert fetchval(database, "SELECT count(*) FROM quarantine") == 0


def _metric(collector: CollectorProcess, name: str) -> float:
    with urllib.request.urlopen(f"http://{collector.http}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def test_serve_exports_ended_runs_and_resumes_from_its_cursor(
        database: str, second_database: str, tmp_path: Path,
        agent_env: dict[str, str]) -> None:
    target_http = f"127.0.0.1:{free_port()}"  # nothing listens there yet
    follow = ("--no-migrate", "--export-otlp", f"http://{target_http}", "--export-content")
    source = CollectorProcess(database, tmp_path / "source", extra=follow).start()
    target = CollectorProcess(second_database, tmp_path / "target", http=target_http,
                              extra=("--no-migrate",))
    try:
        agent({**agent_env, "CMBAGENT_COLLECTOR_URL": source.url}, "emit", "50")
        first = fetchval(database, "SELECT id FROM workflow_runs")
        # The endpoint is away: attempts fail and are counted, nothing is marked sent.
        wait_for(lambda: _metric(source, "cmbagent_otlp_export_failures_total") >= 1, timeout=90)
        assert fetchval(database, "SELECT count(*) FROM otlp_exports") == 0

        target.start()
        wait_for(lambda: fetchval(database, "SELECT count(*) FROM otlp_exports") == 1,
                 timeout=120)
        assert stored(second_database, first) == stored(database, first)

        # A restart keeps the cursor: only the new run is sent.
        source.kill()
        source = CollectorProcess(database, tmp_path / "source", extra=follow).start()
        agent({**agent_env, "CMBAGENT_COLLECTOR_URL": source.url}, "emit", "10")
        wait_for(lambda: fetchval(database, "SELECT count(*) FROM otlp_exports") == 2,
                 timeout=120)
        assert _metric(source, "cmbagent_otlp_export_runs_total") == 1
        assert fetchval(second_database, "SELECT count(*) FROM workflow_runs") == 2
        assert fetchval(second_database, "SELECT count(*) FROM execution_events") \
            == fetchval(database, "SELECT count(*) FROM execution_events")
    finally:
        for process in (source, target):
            if process.alive():
                process.kill()
