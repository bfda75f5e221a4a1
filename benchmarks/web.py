"""Part 8: the web view: its JSON API among a million events, and pages in headless Chromium.

- JSON: ``cmbagent-collector ui`` on the reads data set (part 5: a million events in a thousand
  runs); one keep-alive HTTP client asks, on random runs, for a page of runs, a run's tree, a
  page of 100 of its events (keyset), 100 of a node's events, one event and a run's costs.
  Timed from the client, so HTTP, JSON encoding and the read pool are in the figure.
- Pages: Debian's chromium (``/usr/bin/chromium``, ``CMBAGENT_CHROMIUM``) via Playwright opens
  the run page of the example workflow (``examples/cmbagent_workflow.py``, recorded through a
  real collector) and of a generated run of 100,000 events, and the latter's timeline; each
  figure is the time from navigation start to the page's ``page-ready`` mark (data fetched and
  drawn), in a fresh browser context each time (nothing cached).
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .harness import Bench, collector, execute, free_port
from .harness import run as run_async
from .reads import EVENTS_PER_RUN, RUNS, _ensure_data, _id
from .report import Result
from .stats import Summary, percentile

GOAL_JSON_MS = 50.0
GOALS_PAGE_MS = {"example": 500.0, "100,000 events": 1500.0}
LARGE_EVENTS = 100_000
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cmbagent_workflow.py"
CHROMIUM = os.environ.get("CMBAGENT_CHROMIUM", "/usr/bin/chromium")

#: One run of LARGE_EVENTS events: a planning phase, 8 steps with 3 sub-agents each, events in
#: 33 equal blocks (one per node), spans of 40 ms, a cost record per LLM call.
LARGE_RUN = f"""
INSERT INTO sessions (id) VALUES ('{_id("large session")}');
INSERT INTO workflow_runs (id, session_id, status, started_at, completed_at, task_description)
VALUES ('{_id("large")}', '{_id("large session")}', 'completed', '2026-01-01',
        '2026-01-01'::timestamptz + interval '{LARGE_EVENTS * 45 // 1000} seconds',
        'a run of {LARGE_EVENTS} events');
INSERT INTO dag_nodes (run_id, id, depth, node_type, name, status, order_index)
SELECT '{_id("large")}', md5('ln' || k)::uuid, 0, CASE k WHEN 0 THEN 'phase' ELSE 'step' END,
       CASE k WHEN 0 THEN 'planning' ELSE 'step_' || k END, 'completed', k
FROM generate_series(0, 8) k;
INSERT INTO dag_edges (run_id, from_node_id, to_node_id)
SELECT '{_id("large")}', md5('ln' || k)::uuid, md5('ln' || (k + 1))::uuid
FROM generate_series(0, 7) k;
INSERT INTO dag_nodes (run_id, id, parent_node_id, depth, node_type, name, agent, status,
                       order_index)
SELECT '{_id("large")}', md5('ln' || k || '.' || a)::uuid, md5('ln' || k)::uuid, 1, 'sub_agent',
       (ARRAY['engineer', 'researcher', 'executor'])[a + 1],
       (ARRAY['engineer', 'researcher', 'executor'])[a + 1], 'completed', a
FROM generate_series(1, 8) k, generate_series(0, 2) a;
INSERT INTO execution_events (run_id, id, node_id, event_type, agent_name, status, "timestamp",
                              started_at, completed_at, inputs, depth)
SELECT '{_id("large")}', md5('le' || i)::uuid,
       CASE WHEN b = 0 THEN md5('ln0')::uuid
            ELSE md5('ln' || ((b - 1) / 3 + 1) || '.' || ((b - 1) % 3))::uuid END,
       (ARRAY['agent_call', 'message', 'llm_call', 'tool_call', 'message'])[i % 5 + 1],
       'engineer', 'completed', ts, ts, ts + interval '40 milliseconds',
       jsonb_build_object('content', 'Step ' || i || ': ' || repeat('fit the spectrum ', 10)),
       (i % 5 > 1)::int
FROM generate_series(0, {LARGE_EVENTS - 1}) i,
     LATERAL (SELECT i * 33 / {LARGE_EVENTS} AS b,
                     '2026-01-01'::timestamptz + i * interval '45 milliseconds' AS ts) t;
INSERT INTO cost_records (run_id, id, node_id, event_id, model, agent_name, total_tokens,
                          cost_usd, "timestamp")
SELECT run_id, md5('lc' || id)::uuid, node_id, id, 'gpt-4o', agent_name, 1000, 0.004,
       "timestamp"
FROM execution_events WHERE run_id = '{_id("large")}' AND event_type = 'llm_call';
"""


@contextmanager
def ui(bench: Bench, dsn: str) -> Iterator[str]:
    """``cmbagent-collector ui`` on ``dsn``; its base URL."""
    import urllib.request

    address = f"127.0.0.1:{free_port()}"
    log = (bench.scratch / f"ui-{address.rpartition(':')[2]}.log").open("ab")
    process = subprocess.Popen([sys.executable, "-m", "collector", "--dsn", dsn, "ui", "--http",
                                address], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://{address}/readyz", timeout=2)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"`ui` did not start (log {log.name})") from None
                time.sleep(0.1)
        yield f"http://{address}"
    finally:
        process.terminate()
        process.wait(30)
        log.close()


async def _time_api(base: str, samples: int, blocks: int) -> dict[str, list[list[float]]]:
    import aiohttp

    rng = random.Random(11)

    def some_run() -> tuple[int, uuid.UUID]:
        number = rng.randrange(RUNS)
        return number, _id(f"r{number}")

    def timeline() -> str:
        number, run = some_run()
        after = number * EVENTS_PER_RUN + rng.randrange(EVENTS_PER_RUN - 100)
        return f"/api/runs/{run}/events?after={after}&limit=100"

    def node_events() -> str:
        number, run = some_run()
        node = _id(f"n{number}.{rng.randrange(1, 9)}.{rng.randrange(3)}")
        return f"/api/runs/{run}/events?node={node}&limit=100"

    def one_event() -> str:
        number, run = some_run()
        return f"/api/runs/{run}/events/{_id(f'e{number}.{rng.randrange(EVENTS_PER_RUN)}')}"

    requests = {
        "runs (20 with totals)": lambda: "/api/runs?limit=20",
        "run tree (33 nodes)": lambda: f"/api/runs/{some_run()[1]}",
        "timeline page (100, keyset)": timeline,
        "node's events (100)": node_events,
        "one event": one_event,
        "run's costs": lambda: f"/api/costs?run={some_run()[1]}",
    }
    timings: dict[str, list[list[float]]] = {name: [] for name in requests}
    async with aiohttp.ClientSession(base) as session:
        async def get(path: str) -> None:
            async with session.get(path) as response:
                assert response.status == 200, (path, response.status, await response.text())
                await response.read()

        for make in requests.values():  # warm: connections, prepared statements, caches
            for _ in range(20):
                await get(make())
        for _ in range(blocks):
            for name, make in requests.items():
                block = []
                for _ in range(samples):
                    path = make()
                    started = time.perf_counter()
                    await get(path)
                    block.append((time.perf_counter() - started) * 1e3)
                timings[name].append(block)
    return timings


def _record_example(bench: Bench, dsn: str) -> str:
    with collector(bench, dsn) as process:
        result = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True,
                                timeout=300, env=bench.agent_env(process.url))
    found = re.search(r"run=(\S+)", result.stdout)
    if result.returncode != 0 or "delivered=True" not in result.stdout or not found:
        raise RuntimeError(f"the example failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return found.group(1)


def _page_times(base: str, pages: dict[str, str], rounds: int) -> dict[str, list[float]]:
    from playwright.sync_api import sync_playwright

    times: dict[str, list[float]] = {name: [] for name in pages}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            for _ in range(rounds):
                for name, path in pages.items():
                    context = browser.new_context(viewport={"width": 1400, "height": 900})
                    page = context.new_page()
                    page.goto(base + path)
                    page.wait_for_selector("body[data-ready]")
                    times[name].append(page.evaluate(
                        "performance.getEntriesByName('page-ready')[0].startTime"))
                    context.close()
        finally:
            browser.close()
    return times


def run(bench: Bench) -> list[Result]:
    results = []
    reads_dsn = bench.database("reads", fresh=False)
    run_async(_ensure_data(reads_dsn))
    samples, blocks = bench.scale(200, 50), bench.scale(3, 2)
    with ui(bench, reads_dsn) as base:
        timings = run_async(_time_api(base, samples, blocks))
    for name, block_list in timings.items():
        p50 = Summary.of(percentile(b, 50) for b in block_list)
        p99 = Summary.of(percentile(b, 99) for b in block_list)
        results.append(Result("8 web", f"GET {name}, 1M events",
                              f"p50 {p50.format(' ms')}, p99 {p99.format(' ms')}",
                              goal=f"p99 < {GOAL_JSON_MS:.0f} ms", met=p99.median < GOAL_JSON_MS))

    dsn = bench.database("web")
    example = _record_example(bench, dsn)
    execute(dsn, LARGE_RUN)
    execute(dsn, "VACUUM ANALYZE")  # as autovacuum would leave it
    large = _id("large")
    pages = {"example": f"/runs/{example}", "100,000 events": f"/runs/{large}",
             "100,000 events, timeline": f"/runs/{large}/timeline"}
    with ui(bench, dsn) as base:
        times = _page_times(base, pages, bench.scale(15, 5))
    for name, values in times.items():
        summary = Summary.of(values)
        goal = GOALS_PAGE_MS.get(name)
        results.append(Result("8 web", f"page usable: {name}", summary.format(" ms"),
                              goal=f"< {goal:.0f} ms" if goal else "-",
                              met=summary.median < goal if goal else None,
                              note="headless Chromium, navigation start to drawn"))
    return results
