"""The record format: version 2 keys are column names; version 1 frames still store the same."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import msgpack
import pytest

from agent_shim.wire import encode_frame, new_id, now_us
from collector.pipeline import Reject, decode, to_row
from collector.store import Store
from collector.tables import KINDS, Column

from .helpers.support import fetch

RUN, SESSION, NODE, OTHER, EVENT = (new_id() for _ in range(5))
T0 = now_us()
T1 = T0 + 1500

# The same facts in both versions: (kind, version 1 record, version 2 record).
PAIRS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("session",
     {"k": "session", "p": "point", "id": SESSION, "name": "s", "status": "active",
      "meta": {"a": 1}, "ts": T0},
     {"k": "session", "id": SESSION, "name": "s", "status": "active", "meta": {"a": 1},
      "created_at": T0}),
    ("run start",
     {"k": "run", "p": "start", "id": RUN, "session": SESSION, "task": "t", "status": "running",
      "ts": T0},
     {"k": "run", "id": RUN, "session_id": SESSION, "task_description": "t",
      "status": "running", "started_at": T0}),
    ("run end",
     {"k": "run", "p": "end", "id": RUN, "session": SESSION, "status": "failed", "error": "e",
      "meta": "not a map", "ts": T1},
     {"k": "run", "id": RUN, "session_id": SESSION, "status": "failed", "error_message": "e",
      "meta": "not a map", "completed_at": T1}),
    ("node",
     {"k": "node", "p": "start", "id": NODE, "run": RUN, "session": SESSION, "name": "step_1",
      "node_type": "step", "parent_node": OTHER, "depth": 1, "agent": "engineer",
      "order_index": 3, "status": "running", "ts": T0},
     {"k": "node", "id": NODE, "run_id": RUN, "session_id": SESSION, "name": "step_1",
      "node_type": "step", "parent_node_id": OTHER, "depth": 1, "agent": "engineer",
      "order_index": 3, "status": "running", "started_at": T0}),
    ("edge",
     {"k": "edge", "p": "point", "run": RUN, "session": SESSION, "from": OTHER, "to": NODE,
      "dependency_type": "conditional", "condition": "redo"},
     {"k": "edge", "run_id": RUN, "from_node_id": OTHER, "to_node_id": NODE,
      "dependency_type": "conditional", "condition": "redo"}),
    ("event end",
     {"k": "event", "p": "end", "id": EVENT, "run": RUN, "session": SESSION, "node": NODE,
      "parent": OTHER, "type": "tool_call", "subtype": "python", "agent": "engineer",
      "status": "failed", "depth": 2, "inputs": {"x": [1]}, "outputs": "out", "error": "boom",
      "meta": {"m": True}, "ts": T1},
     {"k": "event", "id": EVENT, "run_id": RUN, "session_id": SESSION, "node_id": NODE,
      "parent_event_id": OTHER, "event_type": "tool_call", "event_subtype": "python",
      "agent_name": "engineer", "status": "failed", "depth": 2, "inputs": {"x": [1]},
      "outputs": "out", "error_message": "boom", "meta": {"m": True}, "timestamp": T1,
      "completed_at": T1}),
    ("cost",
     {"k": "cost", "p": "point", "id": OTHER, "run": RUN, "session": SESSION, "node": NODE,
      "event": EVENT, "model": "gpt-4o", "agent": "engineer", "prompt_tokens": 10,
      "completion_tokens": 5, "total_tokens": 15, "cost_usd": 0.25, "ts": T0},
     {"k": "cost", "id": OTHER, "run_id": RUN, "session_id": SESSION, "node_id": NODE,
      "event_id": EVENT, "model": "gpt-4o", "agent_name": "engineer", "prompt_tokens": 10,
      "completion_tokens": 5, "total_tokens": 15, "cost_usd": 0.25, "timestamp": T0}),
]


@pytest.mark.parametrize(("v1", "v2"), [(v1, v2) for _, v1, v2 in PAIRS],
                         ids=[name for name, _, _ in PAIRS])
def test_a_version_1_record_makes_the_row_its_version_2_twin_makes(v1: dict, v2: dict) -> None:
    assert to_row(v1, version=1) == to_row(v2, version=2)


def test_version_2_keys_are_exactly_column_names() -> None:
    for _, _, record in PAIRS:
        table = KINDS[record["k"]]
        assert set(record) - {"k"} <= table.names


@pytest.mark.parametrize(("record", "says"), [
    ({**PAIRS[5][2], "run": RUN}, "execution_events has no column 'run'"),
    ({**PAIRS[5][2], "p": "end"}, "execution_events has no column 'p'"),
    ({**PAIRS[4][2], "session_id": SESSION}, "dag_edges has no column 'session_id'"),
    ({k: v for k, v in PAIRS[5][2].items() if k != "timestamp"}, "timestamp is required"),
    ({**PAIRS[5][2], "event_type": ""}, "event_type is required"),
    ({k: v for k, v in PAIRS[1][2].items() if k != "id"}, "id is required"),
])
def test_a_version_2_record_with_a_foreign_or_missing_key_is_refused(record: dict,
                                                                     says: str) -> None:
    with pytest.raises(Reject) as refused:
        to_row(record, version=2)
    assert refused.value.reason == "bad_record" and says in refused.value.detail


@pytest.mark.parametrize(("record", "says"), [
    ({**PAIRS[5][2], "depth": 2**40}, "execution_events.depth"),
    ({**PAIRS[5][2], "timestamp": "yesterday"}, "execution_events.timestamp"),
    ({**PAIRS[5][2], "node_id": b"short"}, "execution_events.node_id"),
    ({**PAIRS[6][2], "cost_usd": float("nan")}, "cost_records.cost_usd"),
    ({**PAIRS[5][2], "agent_name": 7}, "execution_events.agent_name"),
])
def test_a_version_2_value_its_column_cannot_hold_is_refused_naming_it(record: dict,
                                                                       says: str) -> None:
    with pytest.raises(Reject) as refused:
        to_row(record, version=2)
    assert refused.value.reason == "bad_value" and says in refused.value.detail


def test_version_1_keys_it_does_not_know_are_ignored_as_before() -> None:
    record = {**PAIRS[5][1], "something_new": 1}
    assert to_row(record, version=1) == to_row(PAIRS[5][2], version=2)


def test_a_column_without_a_merge_rule_is_an_error_at_declaration() -> None:
    with pytest.raises(ValueError, match="no merge rule 'newest'"):
        Column("x", "text", "newest")  # type: ignore[arg-type]


def test_frames_of_both_versions_store_the_same_rows(database: str) -> None:
    packed = {version: [msgpack.packb(record, use_bin_type=True)
                        for _, *records in PAIRS for record in records[version - 1:version]]
              for version in (1, 2)}
    frames = [encode_frame(new_id(), {"drops": [[RUN, "queue_full", 4]]}, packed[version],
                           version=version) for version in (1, 2)]

    async def write(frame: bytes) -> None:
        store = Store(database, pool_size=1)
        await store.open()
        try:
            decoded = decode(b"peer", frame, 8 * 1024 * 1024)
            assert decoded.quarantined == [] and len(decoded.rows) == len(PAIRS) + 1
            await store.write([decoded])
        finally:
            await store.close()

    tables = [table.name for table in KINDS.values()]
    stored = []
    for frame in frames:
        asyncio.run(write(frame))
        # Every declared column (not the database's own, such as the time a row was received).
        stored.append({table.name: [
            {c.name: row[c.name] for c in table.columns}
            for row in fetch(database, f"SELECT * FROM {table.name}")] for table in KINDS.values()})
        for table in tables:
            fetch(database, f"DELETE FROM {table}")
    assert stored[0] == stored[1]
    run = stored[1]["workflow_runs"][0]
    assert run["id"] == uuid.UUID(bytes=RUN) and run["status"] == "failed"
    assert run["meta"] == '{"value": "not a map"}'
    assert stored[1]["execution_events"][0]["error_message"] == "boom"
