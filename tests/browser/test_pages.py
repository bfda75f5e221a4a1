"""The web view in a real browser: the example workflow from the runs list to a comparison,
live updates, untrusted content, and a timeline that stays small in the page."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

from playwright.sync_api import Page, expect

from ..helpers.support import CollectorProcess, fetchval
from .conftest import open_page, screenshot

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "cmbagent_workflow.py"

#: What an attacker would plant: markup that, if it were ever parsed, sets window.__pwned.
PAYLOAD = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=1">'

HOSTILE = f"""
import agent_shim
P = {PAYLOAD!r}
t = agent_shim.activate()
with t.run("task " + P) as run:
    with run.phase("control"):
        with run.step(1, "goal " + P):
            with t.span("agent_call", agent_name="eng" + P):
                t.event("message", agent_name="eng" + P, inputs={{"content": "message " + P}})
                t.event("tool_call", agent_name="eng" + P,
                        inputs={{"name": "lookup", "arguments": {{"query": "argument " + P}}}})
                t.event("message", agent_name="reader", inputs={{"content": "long " + "x" * 40000}})
print(f"run={{run.uuid}} flushed={{t.flush(30)}}")
"""

#: A run whose step waits for a file: running until the test lets it finish.
LIVE = """
import os, sys, time
import agent_shim
t = agent_shim.activate()
with t.run("live demo") as run:
    with run.phase("control"):
        with run.step(1, "wait for the signal"):
            t.event("message", agent_name="engineer", inputs={"content": "working"})
            print(f"run={run.uuid} flushed={t.flush(30)}", flush=True)
            while not os.path.exists(sys.argv[1]):
                time.sleep(0.05)
print(f"done flushed={t.flush(30)}", flush=True)
"""

#: Many events in one run, for the timeline.
MANY = """
import sys
import agent_shim
t = agent_shim.activate()
with t.run("many events") as run:
    for i in range(int(sys.argv[1])):
        with t.span("agent_call", agent_name=f"agent_{i % 7}"):
            t.event("message", agent_name=f"agent_{i % 7}", inputs={"content": f"message {i}"})
print(f"run={run.uuid} flushed={t.flush(60)}")
"""


def run_program(collector: CollectorProcess, env: dict[str, str], *args: str) -> str:
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=180,
                            env={**os.environ, **env, "CMBAGENT_COLLECTOR_URL": collector.url})
    # Everything is stored before the browser looks (the example says delivered=True).
    assert re.search(r"(flushed|delivered)=True", result.stdout), result.stdout + result.stderr
    found = re.search(r"run=(\S+)", result.stdout)
    assert found, result.stdout
    return found.group(1)


def node(page: Page, name: str):  # type: ignore[no-untyped-def]
    return page.locator(f'svg.dag g.node[data-name="{name}"]')


def test_the_example_run_from_the_list_to_a_comparison_of_the_failed_step_and_its_retry(
        page: Page, collector: CollectorProcess, agent_env: dict[str, str]) -> None:
    run = run_program(collector, agent_env, str(EXAMPLE))
    base = f"http://{collector.http}"

    open_page(page, base + "/")
    expect(page.locator(f'#runs tr[data-run="{run}"]')).to_contain_text("completed")
    screenshot(page, "runs")
    page.get_by_role("link", name=re.compile("Hubble constant")).click()
    page.wait_for_selector("svg.dag")

    for name in ("planning", "control", "step_1", "step_2", "step_3_retry_1", "step_4"):
        expect(node(page, name)).to_have_attribute("data-status", "completed")
    expect(node(page, "planning")).to_have_attribute("data-type", "phase")
    expect(node(page, "step_3")).to_have_attribute("data-status", "failed")
    expect(node(page, "step_3_redo_1")).to_have_attribute("data-type", "branch_point")
    expect(node(page, "step_3_redo_1")).to_contain_text("The prior on H0 is empty")
    # Sub-agents sit inside their step; the redo hangs off the failed step by a conditional
    # edge; the failed attempt, the branch point and the retry share one row.
    expect(node(page, "step_1").locator('g.agent[data-name="engineer"]')).to_have_count(1)
    failed_id = node(page, "step_3").get_attribute("data-id")
    redo_id = node(page, "step_3_redo_1").get_attribute("data-id")
    expect(page.locator(f'path.edge.conditional[data-from="{failed_id}"][data-to="{redo_id}"]')
           ).to_have_count(1)
    rows = {name: node(page, name).bounding_box()
            for name in ("step_3", "step_3_redo_1", "step_3_retry_1", "step_4")}
    assert rows["step_3"]["y"] == rows["step_3_redo_1"]["y"] == rows["step_3_retry_1"]["y"]
    assert rows["step_3"]["x"] < rows["step_3_redo_1"]["x"] < rows["step_3_retry_1"]["x"]
    assert rows["step_4"]["y"] > rows["step_3"]["y"]

    node(page, "step_3").locator("rect.box").click()
    events = page.locator("#node-events li")
    expect(events.first).to_contain_text("workflow/step")
    expect(events.first).to_contain_text("the code of step 3 exited with an error")
    page.set_viewport_size({"width": 1400, "height": 1400})  # the whole graph in the picture
    screenshot(page, "run")
    page.set_viewport_size({"width": 1400, "height": 900})

    events.first.get_by_role("link").click()
    page.wait_for_selector("#event-error")
    expect(page.locator("#event-error")).to_have_text("the code of step 3 exited with an error")
    expect(page.locator("h1")).to_contain_text("workflow/step")
    screenshot(page, "event")

    code = page.locator("#node-events li", has_text="code_execution")
    page.go_back()
    page.wait_for_selector("#node-events li")
    code.first.get_by_role("link").click()
    expect(page.locator("pre.code")).to_contain_text("assert prior[0] < prior[1]")
    screenshot(page, "event-code")

    page.go_back()
    page.get_by_role("link", name="Compare step_3 with step_3_retry_1").click()
    page.wait_for_selector(".compare .side")
    left, right = page.locator(".compare .side").all()
    expect(left.locator("h2").first).to_contain_text("step_3")
    expect(left.locator("h2").first).to_contain_text("failed")
    expect(left.locator("pre.code").first).to_contain_text("prior = (80, 60)")
    expect(right.locator("h2").first).to_contain_text("step_3_retry_1")
    expect(right).to_contain_text("The prior on H0 is empty; widen it to (50, 90) km/s/Mpc.")
    expect(right.locator("pre.code").first).to_contain_text("prior = (50, 90)")
    screenshot(page, "compare")

    open_page(page, f"{base}/runs/{run}/timeline")
    stored = fetchval(collector.dsn, "SELECT count(*) FROM execution_events WHERE run_id = $1",
                      uuid.UUID(run))
    assert stored > 100  # AG2's activity is in it, not only the workflow's own events
    expect(page.locator("#timeline-status")).to_have_text(f"{stored} of {stored} events")
    screenshot(page, "timeline")
    open_page(page, f"{base}/costs?run={run}")
    screenshot(page, "costs")


def test_a_running_step_turns_completed_without_a_reload(
        page: Page, collector: CollectorProcess, agent_env: dict[str, str],
        tmp_path: Path) -> None:
    signal = tmp_path / "finish"
    program = subprocess.Popen(
        [sys.executable, "-c", LIVE, str(signal)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, **agent_env, "CMBAGENT_COLLECTOR_URL": collector.url})
    try:
        assert program.stdout is not None
        first = program.stdout.readline()
        assert "flushed=True" in first, first
        run = re.search(r"run=(\S+)", first).group(1)  # type: ignore[union-attr]
        runs = page.context.new_page()
        open_page(runs, f"http://{collector.http}/")
        expect(runs.locator(f'#runs tr[data-run="{run}"]')).to_have_attribute("data-status",
                                                                             "running")
        open_page(page, f"http://{collector.http}/runs/{run}")
        expect(node(page, "step_1")).to_have_attribute("data-status", "running")
        expect(page.locator("#run-status")).to_have_attribute("data-status", "running")
        page.evaluate("window.__same_page = true")
        screenshot(page, "run-live")
        signal.touch()
        expect(node(page, "step_1")).to_have_attribute("data-status", "completed", timeout=20_000)
        expect(page.locator("#run-status")).to_have_attribute("data-status", "completed")
        assert page.evaluate("window.__same_page") is True  # updated in place, not reloaded
        expect(runs.locator(f'#runs tr[data-run="{run}"]')).to_have_attribute(
            "data-status", "completed", timeout=20_000)  # the runs list follows too
    finally:
        signal.touch()
        assert "flushed=True" in program.communicate(timeout=60)[0]


def test_planted_markup_is_shown_as_text_and_executes_nothing(
        page: Page, collector: CollectorProcess, agent_env: dict[str, str]) -> None:
    run = run_program(collector, agent_env, "-c", HOSTILE)
    base = f"http://{collector.http}"
    pages = [base + "/", f"{base}/runs/{run}", f"{base}/runs/{run}/timeline",
             f"{base}/compare?a={run}&b={run}"]
    for url in pages:
        open_page(page, url)
        page.wait_for_timeout(200)  # an onerror would fire once the broken image failed
        assert page.evaluate("window.__pwned") is None, url
        assert page.locator("main img, main script").count() == 0, url
    open_page(page, f"{base}/runs/{run}")
    expect(page.locator("h1")).to_have_text("task " + PAYLOAD)  # shown, as text
    agent = page.locator("svg.dag g.agent").first
    assert agent.get_attribute("data-name") == "eng" + PAYLOAD
    agent.click()
    expect(page.locator("#node-panel h2").first).to_contain_text("eng" + PAYLOAD)
    links = page.locator("#node-events li a")
    expect(links.first).to_be_visible()
    targets = [links.nth(i).get_attribute("href") for i in range(links.count())]
    for target in targets:
        open_page(page, base + target)
        page.wait_for_timeout(200)
        assert page.evaluate("window.__pwned") is None, target
        assert page.locator("main img, main script").count() == 0, target
    # The tool argument, shown as a JSON string (its quotes escaped), not as markup.
    expect(page.locator("main")).to_contain_text(
        "argument <script>window.__pwned=1</script><img src=x onerror=")
    screenshot(page, "hostile-event")


def test_a_truncated_field_is_marked_with_its_original_size(
        page: Page, collector: CollectorProcess, agent_env: dict[str, str]) -> None:
    run = run_program(collector, agent_env, "-c", HOSTILE)
    base = f"http://{collector.http}"
    open_page(page, f"{base}/runs/{run}")
    page.locator('svg.dag g.agent[data-name="reader"]').click()
    page.locator("#node-events li a").first.click()
    page.wait_for_selector(".truncated")
    # The shim keeps 32,768 characters of the 40,005 and records the original size.
    expect(page.locator("p .truncated")).to_have_text(
        "inputs.content truncated (original 40005 chars) ")
    expect(page.locator(".json-string + .truncated")).to_have_text(" truncated: 7237 more chars")
    screenshot(page, "event-truncated")


def test_the_timeline_keeps_only_the_rows_in_view_in_the_page(
        page: Page, collector: CollectorProcess, agent_env: dict[str, str]) -> None:
    run = run_program(collector, agent_env, "-c", MANY, "3000")
    open_page(page, f"http://{collector.http}/runs/{run}/timeline")
    expect(page.locator("#timeline-status")).to_have_text("6000 of 6000 events")
    assert page.locator("#timeline .row").count() < 100
    page.locator("#timeline").evaluate("box => { box.scrollTop = box.scrollHeight; }")
    expect(page.locator("#timeline .row").last).to_contain_text("message agent_")
    assert page.locator("#timeline .row").count() < 100
    before = page.locator("#timeline .rows").evaluate("rows => rows.scrollWidth")
    page.get_by_role("button", name="Zoom in").click()
    assert page.locator("#timeline .rows").evaluate("rows => rows.scrollWidth") > before
