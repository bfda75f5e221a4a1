"""A real Phoenix (``arize-phoenix``, in a virtualenv of its own: ``.ci/phoenix.sh`` makes it and
sets PHOENIX_BIN) on loopback reads the example workflow as we export it: every span once, with
its parent, its OpenInference kind, its token counts and the run's session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from collector.otlp import convention
from collector.otlp.export import load_run, requests
from collector.otlp.spans import run_spans
from collector.schema import connect

from ..helpers.support import fetchval, free_port, run_async, wait_for
from ..test_workflow import example_run  # noqa: F401  (a fixture)

PROJECT = "cmbagent"


@pytest.fixture
def phoenix(tmp_path: Path) -> Iterator[str]:
    """A Phoenix server of this test's own; its base URL."""
    binary = os.environ.get("PHOENIX_BIN")
    assert binary, "set PHOENIX_BIN to a Phoenix venv's `phoenix` (bash .ci/phoenix.sh does)"
    port = free_port()
    env = {**os.environ, "PHOENIX_PORT": str(port), "PHOENIX_GRPC_PORT": str(free_port()),
           "PHOENIX_HOST": "127.0.0.1", "PHOENIX_WORKING_DIR": str(tmp_path / "phoenix"),
           "PHOENIX_TELEMETRY_ENABLED": "false"}
    log = (tmp_path / "phoenix.log").open("wb")
    process = subprocess.Popen([binary, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert process.poll() is None, (tmp_path / "phoenix.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    try:
        wait_for(healthy, timeout=240, interval=0.5)
        yield base
    finally:
        process.terminate()
        process.wait(30)


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def phoenix_spans(base: str, trace: str) -> list[dict[str, Any]]:
    """The trace's spans as Phoenix lists them (none while it has not made the project yet)."""
    spans, cursor = [], None
    while True:
        try:
            page = get(f"{base}/v1/projects/{PROJECT}/spans?limit=1000"
                       + (f"&cursor={cursor}" if cursor else ""))
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise
        spans += [s for s in page["data"] if s["context"]["trace_id"] == trace]
        cursor = page["next_cursor"]
        if not cursor:
            return spans


def export(dsn: str, run: uuid.UUID, base: str) -> None:
    result = subprocess.run([sys.executable, "-m", "collector", "--dsn", dsn, "export", str(run),
                             "--otlp", base, "--service-name", PROJECT],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def ours(dsn: str, run: uuid.UUID) -> dict[str, Any]:
    async def read() -> Any:
        connection = await connect(dsn)
        try:
            return run_spans(await load_run(connection, run))
        finally:
            await connection.close()

    return {span.span_id.hex(): span for span in run_async(read())}


def test_phoenix_shows_the_exported_run_once_with_parents_kinds_tokens_and_session(
        example_run: tuple[str, uuid.UUID, str], phoenix: str) -> None:
    dsn, run, _ = example_run
    expected = ours(dsn, run)
    export(dsn, run, phoenix)
    seen = wait_for(lambda: (s := phoenix_spans(phoenix, run.hex)) and len(s) >= len(expected)
                    and s, timeout=60, interval=0.5)

    by_id = {s["context"]["span_id"]: s for s in seen}
    assert len(by_id) == len(seen) == len(expected)
    assert by_id.keys() == expected.keys()
    for span_id, span in by_id.items():
        mine = expected[span_id]
        attributes = convention.attributes(mine.attributes)
        assert span["name"] == mine.name
        assert span["parent_id"] == (mine.parent_span_id.hex() or None)
        assert span["span_kind"] == attributes[convention.SPAN_KIND]
        assert span["attributes"]["session.id"] == attributes[convention.SESSION]
        if span["span_kind"] == "LLM":
            for key in (convention.OI_PROMPT_TOKENS, convention.OI_COMPLETION_TOKENS,
                        convention.OI_TOTAL_TOKENS):
                assert span["attributes"][key] == attributes[key], key
    roots = [s for s in seen if s["parent_id"] is None]
    assert [s["name"] for s in roots] == ["invoke_workflow"]
    assert {s["span_kind"] for s in seen} >= {"CHAIN", "AGENT", "LLM", "TOOL"}
    assert any(s["status_code"] == "ERROR" for s in seen)  # step 3's failed attempt

    session = str(fetchval(dsn, "SELECT session_id FROM workflow_runs WHERE id = $1", run))
    tokens = fetchval(dsn, "SELECT sum(total_tokens) FROM cost_records WHERE run_id = $1", run)
    sessions = get(f"{phoenix}/v1/projects/{PROJECT}/sessions")["data"]
    assert [(s["session_id"], s["token_count_total"]) for s in sessions] == [(session, tokens)]

    # Again: the same ids, so Phoenix keeps one of each. A probe trace sent afterwards shows
    # when Phoenix has taken in everything before it.
    export(dsn, run, phoenix)
    probe = _send_probe(phoenix)
    wait_for(lambda: phoenix_spans(phoenix, probe), timeout=60, interval=0.5)
    assert sorted(s["context"]["span_id"] for s in phoenix_spans(phoenix, run.hex)) \
        == sorted(expected)


def _send_probe(base: str) -> str:
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    trace = uuid.uuid4().bytes
    now = time.time_ns()
    span = Span(trace_id=trace, span_id=b"\x01" * 8, name="probe",
                start_time_unix_nano=now - 1000, end_time_unix_nano=now)
    body = next(requests([span], PROJECT)).SerializeToString()
    request = urllib.request.Request(f"{base}/v1/traces", data=body,
                                     headers={"Content-Type": "application/x-protobuf"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
    return trace.hex()
