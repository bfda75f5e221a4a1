"""Checks on captured AG2 activity, written against *event rows* so that the same function can
run on the database's ``execution_events`` / ``cost_records`` rows later.

An event row is a dict with ``id, parent, run, type, subtype, agent, status, inputs, outputs,
meta, error``; a cost row has ``run, event, model, agent, prompt_tokens, completion_tokens,
total_tokens, cost_usd``. :func:`rows_from_records` turns the shim's records (a span's ``start``
and ``end`` are separate records with the same id) into such rows, checking the pairing.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from agent_shim.records import moment

Row = dict[str, Any]

EVENT_TYPES = ("agent_call", "message", "tool_call", "code_exec", "handoff", "llm_call",
               "conversation", "human_input")


def rows_from_records(records: list[Row]) -> tuple[list[Row], list[Row], list[str]]:
    """Merge each span's start and end; returns event rows, cost rows and pairing problems."""
    problems: list[str] = []
    rows: dict[bytes, Row] = {}
    ends: dict[bytes, Row] = {}
    for record in records:
        if record["k"] != "event":
            continue
        phase = moment(record)
        if phase == "end":
            if record["id"] in ends:
                problems.append(f"span {record['id'].hex()} ended twice")
            ends[record["id"]] = record
        elif record["id"] in rows:
            problems.append(f"event {record['id'].hex()} recorded twice ({phase})")
        else:
            rows[record["id"]] = {**record, "_span": phase == "start"}
    for span_id, end in ends.items():
        row = rows.get(span_id)
        if row is None or not row["_span"]:
            problems.append(f"end without start: {end['event_type']} {span_id.hex()}")
            continue
        if end["run_id"] != row["run_id"]:
            problems.append(f"span {span_id.hex()} ended in another run")
        for key in ("status", "outputs", "error_message", "event_subtype"):
            if end.get(key) is not None:
                row[key] = end[key]
        if isinstance(end.get("meta"), dict):
            row["meta"] = {**(row.get("meta") or {}), **end["meta"]}
        row["_ended"] = True
    for row in rows.values():
        if row["_span"] and not row.get("_ended"):
            problems.append(f"span never ended: {row['event_type']} {row['agent_name']}")
    costs = [r for r in records if r["k"] == "cost"]
    return list(rows.values()), costs, problems


def check_capture(events: list[Row], costs: list[Row], *, counts: dict[str, int],
                  usage: dict[str, Any], secret: str, failed: dict[str, int] | None = None,
                  terminations: int = 0, run: Any = None) -> list[str]:
    """Everything that must hold for one scenario's capture (in ``run``, if given); returns
    the problems found."""
    problems: list[str] = []
    got = Counter(e["event_type"] for e in events)
    want = {t: counts.get(t, 0) for t in EVENT_TYPES}
    actual = {t: got.get(t, 0) for t in EVENT_TYPES}
    if actual != want:
        problems.append(f"event counts {actual} != expected {want}")

    by_id = {e["id"]: e for e in events}
    for e in events:
        if e["status"] == "running":
            problems.append(f"{e['type']} of {e['agent']} left running")
        parent = e.get("parent_event_id")
        if parent is None:
            continue
        if parent not in by_id:
            problems.append(f"{e['type']} of {e['agent']}: parent is not a captured event")
        elif by_id[parent]["run_id"] != e["run_id"]:
            problems.append(f"{e['type']} of {e['agent']}: parent is in another run")
        elif by_id[parent]["event_type"] == "message":
            problems.append(f"{e['type']} of {e['agent']}: a message is never a parent")
    runs = {e["run_id"] for e in events}
    if len(runs) > 1 or (run is not None and runs - {run}):
        problems.append(f"events outside the scenario's run (a lost thread hop): {len(runs)} runs")

    failures = Counter(e["event_type"] for e in events if e["status"] == "failed")
    want_failed = {t: (failed or {}).get(t, 0) for t in EVENT_TYPES}
    if {t: failures.get(t, 0) for t in EVENT_TYPES} != want_failed:
        problems.append(f"failed events {dict(failures)} != expected {failed or {}}")
    ended = sum(1 for e in events
                if e["event_type"] == "handoff" and e.get("event_subtype") == "termination")
    if ended != terminations:
        problems.append(f"{ended} terminations recorded, expected {terminations}")

    # A failed LLM call has no usage, hence no cost record.
    llm_ids = {e["id"] for e in events
               if e["event_type"] == "llm_call" and e["status"] == "completed"}
    if {c["event_id"] for c in costs} != llm_ids or len(costs) != len(llm_ids):
        problems.append("cost records do not match the completed LLM calls one to one")
    for field in ("prompt_tokens", "completion_tokens", "total_tokens"):
        total = sum(c[field] or 0 for c in costs)
        in_events = sum((e.get("meta") or {}).get(field) or 0
                        for e in events if e["event_type"] == "llm_call")
        if not total == in_events == usage[field]:
            problems.append(f"{field}: costs {total}, events {in_events}, client {usage[field]}")
    cost = sum(c["cost_usd"] or 0.0 for c in costs)
    if abs(cost - usage["cost"]) > 1e-9:
        problems.append(f"cost {cost} != client-reported {usage['cost']}")

    if secret in json.dumps([events, costs], default=_text):
        problems.append("the planted secret was recorded")
    return problems


def _text(value: Any) -> str:
    return value.hex() if isinstance(value, bytes) else str(value)
