"""The HTTP server: its JSON API against the CLI's --json, bad requests, tokens, headers.

The pages themselves are tested in a real browser (tests/browser)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from .helpers.support import CollectorProcess, free_port, wait_for
from .test_queries import ok, stored  # noqa: F401  (a fixture)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()
    except urllib.error.URLError:  # not listening (yet)
        return 0, {}, b""


def get_json(url: str) -> Any:
    status, _, body = get(url)
    assert status == 200, body
    return json.loads(body)


def raw_request(address: str, request: bytes) -> bytes:
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


def start_ui(dsn: str, tmp_path: Path, *args: str,
             env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "collector", "--dsn", dsn, "--data-dir", str(tmp_path), "ui", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)


def test_api_answers_what_the_cli_prints_as_json(
        stored: tuple[str, str], collector: CollectorProcess) -> None:  # noqa: F811
    dsn, run = stored
    base = f"http://{collector.http}/api"
    assert get_json(f"{base}/runs") == json.loads(ok(dsn, "runs", "--json"))
    assert get_json(f"{base}/runs/{run}") == json.loads(ok(dsn, "tree", run, "--json"))
    for query, flags in (("?limit=3", ("--limit", "3")),
                         ("?limit=3&after=4", ("--limit", "3", "--after", "4")),
                         ("?node=step_1", ("--node", "step_1")),
                         ("?type=message", ("--type", "message"))):
        assert get_json(f"{base}/runs/{run}/events{query}") == json.loads(
            ok(dsn, "events", run, "--json", *flags))
    first = get_json(f"{base}/runs/{run}/events?limit=1")["events"][0]
    assert get_json(f"{base}/runs/{run}/events/{first['id']}") == first
    costs = get_json(f"{base}/costs?run={run}")
    assert {c["key"]: c["tokens"] for c in costs["by_agent"]} == {"engineer": 100, "planner": 15}
    assert sum(c["cost_usd"] for c in costs["by_model"]) == pytest.approx(0.011)
    assert [c["key"] for c in costs["by_run"]] == [run]


def test_runs_filters_and_keyset_pages(stored: tuple[str, str], collector: CollectorProcess,
                                       agent_env: dict[str, str]) -> None:  # noqa: F811
    dsn, first = stored
    base = f"http://{collector.http}/api/runs"
    assert [r["id"] for r in get_json(f"{base}?q=QUERIES+DEMO")] == [first]
    assert get_json(f"{base}?q=nothing+like+it") == []
    assert [r["id"] for r in get_json(f"{base}?status=completed")] == [first]
    assert get_json(f"{base}?status=running") == []
    assert get_json(f"{base}?user=someone") == []
    assert get_json(f"{base}?since=2999-01-01") == []
    assert [r["id"] for r in get_json(f"{base}?until=2999-01-01")] == [first]
    page = get_json(f"{base}?limit=1")
    after = urllib.request.quote(f"{page[0]['started_at']},{page[0]['id']}")
    assert get_json(f"{base}?limit=1&before={after}") == []


@pytest.mark.parametrize("url, status, message", [
    ("/api/runs?limit=0", 400, "limit must be between 1 and 1000"),
    ("/api/runs?limit=many", 400, "limit must be a whole number"),
    ("/api/runs?since=yesterday", 400, "since must be an ISO date"),
    ("/api/runs?before=nonsense", 400, "before must be STARTED_AT,ID"),
    ("/api/runs/not-a-run", 400, "is not an id"),
    ("/api/runs/00000000-0000-0000-0000-000000000000", 404, "no run"),
    ("/api/runs/00000000-0000-0000-0000-000000000000/events", 404, "no run"),
])
def test_bad_api_requests_get_a_json_error_saying_what_to_do(
        collector: CollectorProcess, url: str, status: int, message: str) -> None:
    code, headers, body = get(f"http://{collector.http}{url}")
    assert code == status and message in json.loads(body)["error"]
    assert headers["Content-Type"].startswith("application/json")


def test_pages_forbid_inline_script_and_framing(collector: CollectorProcess) -> None:
    status, headers, body = get(f"http://{collector.http}/")
    assert status == 200 and b"<script src=\"/static/app.js\"" in body
    policy = headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert headers["X-Content-Type-Options"] == "nosniff"
    for path in ("/static/app.js", "/static/style.css", "/livez", "/api/runs"):
        assert get(f"http://{collector.http}{path}")[1]["Content-Security-Policy"] == policy
    assert get(f"http://{collector.http}/api/runs", )[0] == 200


def test_writes_are_not_routed(collector: CollectorProcess) -> None:
    request = urllib.request.Request(f"http://{collector.http}/api/runs", data=b"{}",
                                     method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 405


def test_a_header_over_64_kib_gets_400_and_one_log_line(collector: CollectorProcess) -> None:
    huge = b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (65 * 1024) + b"\r\n\r\n"
    answer = raw_request(collector.http, huge)
    assert re.match(rb"HTTP/1\.[01] 400 Bad Request\r\n", answer), answer[:200]
    garbage = raw_request(collector.http, b"GET / HTTP/1.1\r\nno colon here\r\n\r\n")
    assert re.match(rb"HTTP/1\.[01] 400 Bad Request\r\n", garbage), garbage[:200]
    # The server goes on, and the log says what happened without a traceback.
    assert get(f"http://{collector.http}/livez")[0] == 200
    log = wait_for(lambda: "malformed HTTP request" in (t := collector.log_text()) and t)
    assert "Traceback" not in log and "Error handling request" not in log


def test_an_http_address_in_use_is_a_clear_refusal(collector: CollectorProcess,
                                                  tmp_path: Path) -> None:
    second = subprocess.run(
        [sys.executable, "-m", "collector", "--dsn", collector.dsn or "", "--data-dir",
         str(tmp_path), "serve", "--no-migrate", "--bind", f"tcp://127.0.0.1:{free_port()}",
         "--http", collector.http], capture_output=True, text=True, timeout=60)
    assert second.returncode == 1
    assert f"cannot serve HTTP on {collector.http}" in second.stderr
    assert "Traceback" not in second.stderr
    assert get(f"http://{collector.http}/livez")[0] == 200  # the first one is untouched


@pytest.mark.parametrize("command", ["serve", "ui"])
def test_a_non_loopback_bind_without_a_token_is_refused(
        database: str, tmp_path: Path, command: str) -> None:
    address = f"0.0.0.0:{free_port()}"
    args = ([sys.executable, "-m", "collector", "--dsn", database, "--data-dir", str(tmp_path),
             command, "--http", address]
            + (["--bind", f"tcp://127.0.0.1:{free_port()}", "--no-migrate"] if command == "serve"
               else []))
    result = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "would be reachable from other hosts: set a token" in result.stderr
    host, _, port = address.rpartition(":")
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", int(port))) != 0, "something listens"


def test_with_a_token_everything_but_the_probes_needs_it(
        stored: tuple[str, str], tmp_path: Path) -> None:  # noqa: F811
    dsn, run = stored
    port = free_port()
    ui = start_ui(dsn, tmp_path, "--http", f"0.0.0.0:{port}",
                  env={**os.environ, "CMBAGENT_HTTP_TOKEN": "s3cret"})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: get(f"{base}/livez")[0] == 200 if ui.poll() is None else
                 pytest.fail(ui.stdout.read().decode()), timeout=60)  # type: ignore[union-attr]
        assert get(f"{base}/readyz")[0] == 200
        for path in ("/", f"/api/runs/{run}", "/static/app.js", "/api/runs?token=wrong"):
            status, _, body = get(f"{base}{path}")
            assert status == 401 and b"needs its token" in body, path
        assert get(f"{base}/api/runs/{run}", {"Authorization": "Bearer wrong"})[0] == 401
        status, _, body = get(f"{base}/api/runs/{run}", {"Authorization": "Bearer s3cret"})
        assert status == 200 and json.loads(body)["run"]["id"] == run
        # ?token= once: a cookie, and the token leaves the address.
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with opener.open(f"{base}/costs?token=s3cret&days=7", timeout=10) as response:
            assert response.status == 200 and response.url == f"{base}/costs?days=7"
        with opener.open(f"{base}/api/runs", timeout=10) as response:
            assert [r["id"] for r in json.loads(response.read())] == [run]
        assert get(f"{base}/metrics")[0] == 404  # `ui` has no collector to measure
    finally:
        ui.terminate()
        assert ui.wait(30) == 0


def test_ui_reads_without_zeromq_and_reports_an_old_schema(
        empty_database: str, tmp_path: Path) -> None:
    port = free_port()
    ui = start_ui(empty_database, tmp_path, "--http", f"127.0.0.1:{port}")
    try:
        status, _, body = wait_for(lambda: (r := get(f"http://127.0.0.1:{port}/readyz"))[0] != 0
                                   and r, timeout=60)
        assert status == 503 and b"schema at revision None" in body
        status, _, body = get(f"http://127.0.0.1:{port}/api/runs")
        assert status == 503 and b"run `cmbagent-collector migrate`" in body
    finally:
        ui.terminate()
        output = ui.communicate(timeout=30)[0].decode()
    assert "listening on tcp" not in output  # no ZeroMQ socket


#: A run that stays running until the file named by argv[1] exists.
RUNNING = """
import os, sys, time
import agent_shim
t = agent_shim.activate()
with t.run("still going") as run:
    with run.phase("control"):
        print(f"run={run.uuid} flushed={t.flush(30)}", flush=True)
        while not os.path.exists(sys.argv[1]):
            time.sleep(0.05)
"""


def test_the_event_stream_follows_a_run_and_sigterm_still_stops_promptly(
        collector: CollectorProcess, agent_env: dict[str, str], tmp_path: Path) -> None:
    finish = tmp_path / "finish"
    program = subprocess.Popen(
        [sys.executable, "-c", RUNNING, str(finish)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, **agent_env, "CMBAGENT_COLLECTOR_URL": collector.url,
             "CMBAGENT_EXIT_TIMEOUT": "1"})
    try:
        assert program.stdout is not None
        first = program.stdout.readline()
        assert "flushed=True" in first, first
        run = re.search(r"run=(\S+)", first).group(1)  # type: ignore[union-attr]
        stream = urllib.request.urlopen(f"http://{collector.http}/api/runs/{run}/stream",
                                        timeout=10)
        assert stream.headers["Content-Type"] == "text/event-stream"
        data = stream.readline().decode()
        assert data.startswith("data: ")
        assert json.loads(data[6:])["run"]["status"] == "running"
        started = time.monotonic()
        assert collector.stop(timeout=30) == 0
        assert time.monotonic() - started < 10, "the open stream held the collector up"
        assert "Traceback" not in collector.log_text()
        stream.close()
    finally:
        finish.touch()
        program.communicate(timeout=60)
