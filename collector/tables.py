"""What each stored table holds and how two versions of one row merge.

Rows arrive in pieces: a span's start and end, a node declared and later finished, a frame sent
twice. Each column has one merge rule, and the same rule serves both places rows meet: in
Python, when two pieces of a row are in one batch, and in SQL (``ON CONFLICT DO UPDATE``), when
the row is already stored. Merging is idempotent, so a redelivered frame changes nothing.
"""

from __future__ import annotations

import functools
import json
import math
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, get_args

Row = dict[str, Any]

#: How two pieces of one row merge (see :data:`RULES`); ``key`` columns identify the row.
Rule = Literal["key", "keep", "latest", "least", "greatest", "merge", "status"]

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MAX_TEXT = 10_000  # names, statuses, error messages: payloads go in jsonb columns

_RANK = {"pending": 0, "running": 1}  # any other status is final and ranks 2


def _status_rank_sql(ref: str) -> str:
    return f"(CASE {ref} WHEN 'pending' THEN 0 WHEN 'running' THEN 1 ELSE 2 END)"


def _keep(old: Any, new: Any) -> Any:
    return new if old is None else old


def _latest(old: Any, new: Any) -> Any:
    return old if new is None else new


def _least(old: Any, new: Any) -> Any:
    return new if old is None else old if new is None else min(old, new)


def _greatest(old: Any, new: Any) -> Any:
    return new if old is None else old if new is None else max(old, new)


def _merge(old: Any, new: Any) -> Any:
    # Both are JSON object texts (jsonb is encoded per record, see ``Column.prepare``). jsonb
    # keeps the last of duplicate keys, so joining the two objects is ``{**old, **new}``.
    if old is None or old == _EMPTY:
        return new
    if new is None or new == _EMPTY:
        return old
    return f"{old[:-1]},{new[1:]}"


def _status(old: Any, new: Any) -> Any:
    if old is None:
        return new
    if new is None:
        return old
    return new if _RANK.get(new, 2) >= _RANK.get(old, 2) else old


# rule -> (python merge, SQL expression over the stored row ``t`` and ``EXCLUDED``)
RULES: dict[Rule, tuple[Callable[[Any, Any], Any], str]] = {
    "keep": (_keep, "COALESCE(t.{c}, EXCLUDED.{c})"),
    "latest": (_latest, "COALESCE(EXCLUDED.{c}, t.{c})"),
    "least": (_least, "LEAST(t.{c}, EXCLUDED.{c})"),
    "greatest": (_greatest, "GREATEST(t.{c}, EXCLUDED.{c})"),
    "merge": (_merge, "t.{c} || EXCLUDED.{c}"),
    "status": (
        _status,
        f"CASE WHEN {_status_rank_sql('EXCLUDED.{c}')} >= {_status_rank_sql('t.{c}')} "
        "THEN EXCLUDED.{c} ELSE t.{c} END",
    ),
}


class ColumnError(ValueError):
    """A value its column cannot hold; the message names the column and its limit."""


#: jsonb values nested deeper are refused: Python's encoder, PostgreSQL's parser and every
#: reader recurse per level (msgpack itself stops near 1,000).
JSONB_MAX_DEPTH = 256


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # as declared in the migrations; jsonb is staged as text and cast on insert
    rule: Rule = "key"
    default: Any = None  # used when a merged row still has no value
    required: bool = False  # every record of the table must give it (key columns always do)

    def __post_init__(self) -> None:
        if self.rule not in get_args(Rule):
            raise ValueError(f"column {self.name!r}: no merge rule {self.rule!r}; "
                             f"choose one of {get_args(Rule)}")

    @functools.cached_property
    def prepare(self) -> Callable[[Any], Any]:
        """A value as stored, checked against this column's type: raises :class:`ColumnError`."""
        check = _checker(self.type)
        if self.rule == "merge":  # merged by joining JSON objects: anything else is wrapped
            return lambda value: check(value if isinstance(value, dict) else {"value": value})
        return check

    @property
    def stage_type(self) -> str:
        return "text" if self.type == "jsonb" else self.type


@dataclass(frozen=True, eq=False)  # one instance per table: identity is equality, hashing is free
class Table:
    name: str
    columns: tuple[Column, ...]

    @functools.cached_property
    def key(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.rule == "key")

    @functools.cached_property
    def names(self) -> frozenset[str]:
        return frozenset(c.name for c in self.columns)

    @functools.cached_property
    def required(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.rule == "key" or c.required)

    @property
    def stage(self) -> str:
        return f"stage_{self.name}"

    def merge(self, old: Row, new: Row) -> Row:
        return {c.name: RULES[c.rule][0](old.get(c.name), new.get(c.name)) if c.rule != "key"
                else old[c.name] for c in self.columns}

    @functools.cached_property
    def _checked(self) -> tuple[tuple[str, Callable[[Any], Any]], ...]:
        return tuple((c.name, c.prepare) for c in self.columns)

    def prepare(self, row: Row) -> Row:
        """The row as stored (jsonb encoded, text cleaned), every value checked against its
        column's declared type; raises :class:`ColumnError` naming the column."""
        for name, prepare in self._checked:
            value = row.get(name)
            if value is not None:
                try:
                    row[name] = prepare(value)
                except ColumnError as exc:
                    raise ColumnError(f"{self.name}.{name}: {exc}") from None
        return row

    def as_tuple(self, row: Row, order: int) -> tuple[Any, ...]:
        """A prepared row as staged for COPY, defaults filled."""
        values = []
        for column in self.columns:
            value = row.get(column.name)
            values.append(column.default if value is None else value)
        return (*values, order)

    def create_stage_sql(self) -> str:
        cols = ", ".join(f'"{c.name}" {c.stage_type}' for c in self.columns)
        return (f"CREATE TEMP TABLE IF NOT EXISTS {self.stage} ({cols}, ord integer) "
                "ON COMMIT DELETE ROWS")

    def upsert_sql(self) -> str:
        names = ", ".join(f'"{c.name}"' for c in self.columns)
        values = ", ".join(f'"{c.name}"::jsonb' if c.type == "jsonb" else f'"{c.name}"'
                           for c in self.columns)
        updates = ", ".join(
            f'"{c.name}" = ' + RULES[c.rule][1].format(c=f'"{c.name}"')
            for c in self.columns if c.rule != "key"
        )
        key = ", ".join(f'"{k}"' for k in self.key)
        return (
            f"INSERT INTO {self.name} AS t ({names}) "
            f"SELECT {values} FROM {self.stage} ORDER BY ord "
            f"ON CONFLICT ({key}) DO UPDATE SET {updates} RETURNING (xmax = 0) AS inserted"
        )


_EMPTY = "{}"


def clean_text(value: str) -> str:
    """Text PostgreSQL accepts: it cannot hold NUL."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


# One encoder for every call: ``json.dumps`` with options builds a new one each time.
_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


def jsonb_text(value: Any) -> str:
    """JSON text PostgreSQL's jsonb accepts: no NUL (not even escaped), no NaN, text keys, at
    most :data:`JSONB_MAX_DEPTH` levels deep; raises :class:`ColumnError` otherwise."""
    try:
        try:
            text = _encode(value)
        except (TypeError, ValueError):
            text = None
        if text is None or "\\u0000" in text:
            text = json.dumps(_jsonable(value), ensure_ascii=False, separators=(",", ":"))
    except RecursionError:
        raise ColumnError(f"nested deeper than {JSONB_MAX_DEPTH} levels") from None
    # Each level opens a bracket: with few brackets in the text, the value cannot be too deep.
    if (text.count("[") + text.count("{") > JSONB_MAX_DEPTH
            and _depth_exceeds(value, JSONB_MAX_DEPTH)):
        raise ColumnError(f"nested deeper than {JSONB_MAX_DEPTH} levels")
    return text


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack = [(value, 1)]  # iterative: the value may be nested deeper than Python recurses
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in
                         (item.values() if isinstance(item, dict) else item))
    return False


# --- what each declared type can hold --------------------------------------------------------

_INTEGER_BITS = {"smallint": 16, "integer": 32, "bigint": 64}
_NUMERIC = re.compile(r"numeric\((\d+), *(\d+)\)")


def _checker(declared: str) -> Callable[[Any], Any]:
    if declared in _INTEGER_BITS:
        return functools.partial(_check_integer, 1 << (_INTEGER_BITS[declared] - 1), declared)
    if declared in ("float8", "double precision"):
        return functools.partial(_check_number, math.inf, declared)
    if numeric := _NUMERIC.fullmatch(declared):
        precision, scale = map(int, numeric.groups())
        return functools.partial(_check_number, 10.0 ** (precision - scale), declared)
    if declared == "text":
        return _check_text
    if declared == "jsonb":
        return jsonb_text
    if declared == "uuid":
        return _check_uuid
    if declared == "timestamptz":
        return _check_time
    raise ValueError(f"no check for the column type {declared!r}: add one to tables.py")


def _check_integer(bound: int, declared: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ColumnError(f"{value!r} is not an integer"[:200])
    if not -bound <= value < bound:
        raise ColumnError(f"{value} is outside the {declared} range [{-bound}, {bound - 1}]")
    return value


def _check_number(bound: float, declared: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ColumnError(f"{value!r} is not a number"[:200])
    if not abs(value) < bound:  # also false for NaN
        limit = "finite" if bound == math.inf else f"below {bound:g} in magnitude"
        raise ColumnError(f"{value!r} is not {limit} ({declared})")
    return float(value)


def _check_text(value: Any) -> str:
    if not isinstance(value, str):
        raise ColumnError(f"{type(value).__name__} is not text")
    return clean_text(value)[:MAX_TEXT]


def _check_uuid(value: Any) -> uuid.UUID:
    if not isinstance(value, bytes) or len(value) != 16:
        raise ColumnError(f"an id is 16 bytes, not {value!r}"[:200])
    return uuid.UUID(bytes=value)


def _check_time(value: Any) -> datetime:
    # Within a century of the epoch's microseconds: anything else is a unit mix-up.
    if (isinstance(value, bool) or not isinstance(value, int)
            or not 0 < value < 5_000_000_000_000_000):
        raise ColumnError(f"a time is integer microseconds since the epoch, not {value!r}"[:200])
    return EPOCH + timedelta(microseconds=value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {clean_text(str(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value)

SESSIONS = Table("sessions", (
    Column("id", "uuid"),
    Column("name", "text", "latest"),
    Column("status", "text", "latest", "active"),
    Column("created_at", "timestamptz", "least", required=True),
    Column("meta", "jsonb", "merge", _EMPTY),
))
RUNS = Table("workflow_runs", (
    Column("id", "uuid"),
    Column("session_id", "uuid", "keep"),
    Column("status", "text", "status", "running"),
    Column("started_at", "timestamptz", "least"),
    Column("completed_at", "timestamptz", "greatest"),
    Column("task_description", "text", "keep"),
    Column("error_message", "text", "latest"),
    Column("meta", "jsonb", "merge", _EMPTY),
))
NODES = Table("dag_nodes", (
    Column("run_id", "uuid"),
    Column("id", "uuid"),
    Column("session_id", "uuid", "keep"),
    Column("parent_node_id", "uuid", "keep"),
    Column("depth", "integer", "greatest", 0),
    Column("node_type", "text", "keep", "node"),
    Column("name", "text", "keep"),
    Column("agent", "text", "keep"),
    Column("status", "text", "status", "pending"),
    Column("order_index", "integer", "keep", 0),
    Column("started_at", "timestamptz", "least"),
    Column("completed_at", "timestamptz", "greatest"),
    Column("error_message", "text", "latest"),
    Column("meta", "jsonb", "merge", _EMPTY),
))
EDGES = Table("dag_edges", (
    Column("run_id", "uuid"),
    Column("from_node_id", "uuid"),
    Column("to_node_id", "uuid"),
    Column("dependency_type", "text", "latest", "sequential"),
    Column("condition", "text", "latest"),
))
EVENTS = Table("execution_events", (
    Column("run_id", "uuid"),
    Column("id", "uuid"),
    Column("session_id", "uuid", "keep"),
    Column("node_id", "uuid", "keep"),
    Column("parent_event_id", "uuid", "keep"),
    Column("event_type", "text", "keep", required=True),
    Column("event_subtype", "text", "latest"),
    Column("agent_name", "text", "keep"),
    Column("status", "text", "status", "completed"),
    Column("timestamp", "timestamptz", "least", required=True),
    Column("started_at", "timestamptz", "least"),
    Column("completed_at", "timestamptz", "greatest"),
    Column("inputs", "jsonb", "keep"),
    Column("outputs", "jsonb", "latest"),
    Column("meta", "jsonb", "merge", _EMPTY),
    Column("error_message", "text", "latest"),
    Column("depth", "integer", "greatest", 0),
))
COSTS = Table("cost_records", (
    Column("run_id", "uuid"),
    Column("id", "uuid"),
    Column("session_id", "uuid", "keep"),
    Column("node_id", "uuid", "keep"),
    Column("event_id", "uuid", "keep"),
    Column("model", "text", "keep"),
    Column("agent_name", "text", "keep"),
    Column("prompt_tokens", "bigint", "keep"),
    Column("completion_tokens", "bigint", "keep"),
    Column("total_tokens", "bigint", "keep"),
    Column("cost_usd", "numeric(20, 10)", "keep"),
    Column("timestamp", "timestamptz", "least", required=True),
))
DROPS = Table("dropped_events", (
    Column("run_id", "uuid"),
    Column("sender", "text"),
    Column("reason", "text"),
    Column("count", "bigint", "greatest"),
    Column("updated_at", "timestamptz", "greatest"),
))

#: The table each record kind (``k`` on the wire) is stored in.
KINDS: dict[str, Table] = {"session": SESSIONS, "run": RUNS, "node": NODES, "edge": EDGES,
                           "event": EVENTS, "cost": COSTS}

#: In the order a batch writes them: what a row points at is written before it.
WRITE_ORDER: tuple[Table, ...] = (SESSIONS, RUNS, NODES, EDGES, EVENTS, COSTS, DROPS)
