"""Checks specific to AG2 1.x captures, on event rows (records or database rows alike)."""

from __future__ import annotations

from fnmatch import fnmatch
from typing import Any

from ag2_checks import check_capture

Row = dict[str, Any]


def check_v1_capture(events: list[Row], costs: list[Row], expected: dict[str, Any],
                     secret: str, run: Any = None) -> list[str]:
    """Everything :func:`ag2_checks.check_capture` checks, plus where nested spans hang, the
    handoffs, the pricing provenance of every LLM call, and unpriced calls left with a null
    cost."""
    terminations = sum(subtype == "termination" for _, subtype, _ in expected["handoffs"])
    problems = check_capture(events, costs, counts=expected["counts"], usage=expected["usage"],
                             secret=secret, failed=expected["failed"], run=run,
                             terminations=terminations)
    by_id = {e["id"]: e for e in events}
    for agent, child, parent in expected["nesting"]:
        children = [e for e in events
                    if fnmatch(e["agent_name"] or "", agent) and e["event_type"] == child]
        if not children:
            problems.append(f"no {child} of {agent} to check the parent of")
        for e in children:
            found = by_id.get(e["parent_event_id"], {}).get("event_type")
            if found != parent:
                problems.append(f"{child} of {agent} hangs under {found}, not {parent}")
    handoffs = [[e["agent_name"], e["event_subtype"], (e["outputs"] or {}).get("to")]
                for e in events if e["event_type"] == "handoff"]
    if handoffs != [list(h) for h in expected["handoffs"]]:
        problems.append(f"handoffs {handoffs} != expected {expected['handoffs']}")
    executions = sorted(((e["event_subtype"], (e["outputs"] or {}).get("exit_code"))
                         for e in events if e["event_type"] == "code_exec"), key=repr)
    if executions != sorted((tuple(x) for x in expected["executions"]), key=repr):
        problems.append(f"code executions {executions} != expected {expected['executions']}")
    llm_calls = [e for e in events if e["event_type"] == "llm_call" and e["status"] == "completed"]
    statuses = [(e["meta"] or {}).get("pricing", {}).get("status") for e in llm_calls]
    if any((e["meta"] or {}).get("pricing", {}).get("table") != "genai-prices"
           or not (e["meta"] or {}).get("pricing", {}).get("version") for e in llm_calls):
        problems.append("an LLM call without the price table and version that priced it")
    unpriced = sum(status != "priced" for status in statuses)
    if unpriced != expected["usage"]["unpriced"]:
        problems.append(f"{unpriced} unpriced LLM calls, expected {expected['usage']['unpriced']}")
    if sum(c["cost_usd"] is None for c in costs) != unpriced:
        problems.append("an unpriced call has a cost, or a priced one has none")
    return problems
