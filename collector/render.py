"""The read side's results as text for a terminal: ``runs``, ``tree`` and ``events``.

Pure functions of what ``reads`` returns (JSON-ready data); nothing here reads or prints.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

Json = dict[str, Any]


def runs(found: list[Json]) -> str:
    """A page of runs, one line each."""
    if not found:
        return "no runs stored yet"
    lines = [f"{'RUN':<36}  {'STATUS':<9}  {'STARTED':<19}  {'DURATION':>8}  {'EVENTS':>7}  "
             f"{'COST':>9}  TASK"]
    for run in found:
        lines.append(f"{run['id']:<36}  {run['status']:<9}  "
                     f"{_time(run['started_at'], '%Y-%m-%d %H:%M:%S'):<19}  "
                     f"{_seconds(run['duration_s']):>8}  {run['events']:>7}  "
                     f"{_cost(run['cost_usd']):>9}  {_clip(run['task'] or '', 50)}")
    return "\n".join(lines)


def tree(found: Json) -> str:
    """A run's header and totals, then its nodes, children indented under their parent."""
    run, totals = found["run"], found["totals"]
    lines = [f"run {run['id']}  {run['status']}  {_seconds(run['duration_s'])}  "
             f"task: {_clip(run['task'] or '-', 70)}",
             f"{totals['events']} events, {totals['tokens']} tokens, {_cost(totals['cost_usd'])}"
             f" ({found['outside_nodes']['events']} events outside any node)", "",
             f"{'NODE':<34}{'TYPE':<14}{'STATUS':<11}{'DURATION':>9}{'EVENTS':>8}{'TOKENS':>8}"
             f"{'COST':>10}  NOTE"]
    incoming = {e["to"]: e for e in found["edges"]}
    names = {n["id"]: n["name"] for root in found["nodes"] for n in (root, *root["children"])}

    def line(node: Json, prefix: str) -> None:
        t = node["totals"]
        lines.append(f"{prefix + (node['name'] or node['id']):<34}{node['node_type']:<14}"
                     f"{node['status']:<11}{_seconds(node['duration_s']):>9}{t['events']:>8}"
                     f"{t['tokens']:>8}{_cost(t['cost_usd']):>10}  "
                     f"{_note(node, incoming.get(node['id']), names)}".rstrip())

    for root in found["nodes"]:
        line(root, "")
        for i, child in enumerate(root["children"]):
            line(child, "  └ " if i == len(root["children"]) - 1 else "  ├ ")
    return "\n".join(lines)


def events(page: Json) -> str:
    """A page of events in order, and how to ask for the next one."""
    if not page["events"]:
        return "no events"
    lines = [f"{'ORDER':>8}  {'TIME':<12}  {'TYPE':<28}{'STATUS':<10}{'AGENT':<18}{'NODE':<22}"
             f"{'MS':>7}  DETAIL"]
    for e in page["events"]:
        kind = e["event_type"] + (f"/{e['event_subtype']}" if e["event_subtype"] else "")
        duration = f"{e['duration_ms']:.0f}" if e["duration_ms"] is not None else "-"
        lines.append(f"{e['execution_order']:>8}  {_time(e['timestamp'], '%H:%M:%S.%f')[:12]}  "
                     f"{_clip(kind, 27):<28}{e['status']:<10}"
                     f"{_clip(e['agent_name'] or '-', 17):<18}"
                     f"{_clip(e['node'] or '-', 21):<22}{duration:>7}  {_detail(e)}".rstrip())
    if page["next_after"] is not None:
        lines.append(f"-- more: --after {page['next_after']}")
    return "\n".join(lines)


def _note(node: Json, edge: Json | None, names: dict[str, str]) -> str:
    """What a reader needs beyond the columns: branches, hypotheses, errors."""
    meta = node["meta"] or {}
    notes = []
    if edge is not None and edge["dependency_type"] != "sequential":
        notes.append(f"{edge['dependency_type']} from {names.get(edge['from'], edge['from'])}"
                     f" [{edge['condition']}]")
    if node["node_type"] == "branch_point" and meta.get("hypothesis"):
        notes.append(f"hypothesis: {_clip(meta['hypothesis'], 60)}")
    if meta.get("forced_acceptance"):
        notes.append(f"accepted: max_redos={meta.get('max_redos')} reached")
    if node["error"]:
        notes.append(f"error: {_clip(node['error'], 60)}")
    return "; ".join(notes)


def _detail(event: Json) -> str:
    if event["error"]:
        return "error: " + _clip(event["error"], 60)
    payload = event["inputs"] if event["inputs"] not in (None, {}) else event["outputs"]
    if payload in (None, {}):
        return ""
    return _clip(json.dumps(payload, ensure_ascii=False, separators=(",", ":")), 70)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.1f}s"


def _cost(value: float) -> str:
    return f"${value:.4f}"


def _clip(text: Any, width: int) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _time(iso: str | None, layout: str) -> str:
    """An ISO time from ``reads`` in ``layout``; ``-`` for none."""
    return datetime.fromisoformat(iso).strftime(layout) if iso else "-"
