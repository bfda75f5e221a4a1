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
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional, get_args

import msgspec
import orjson

#: A row as stored: its values in its table's column order. Ids are 16-byte ``bytes`` and times
#: integer microseconds since the epoch (the store's connections carry codecs for both), jsonb
#: values are JSON text.
Row = tuple[Any, ...]

#: How two pieces of one row merge (see :data:`RULES`); ``key`` columns identify the row.
Rule = Literal["key", "keep", "latest", "least", "greatest", "merge", "status"]

MAX_TEXT = 10_000  # names, statuses, error messages: payloads go in jsonb columns
MAX_TIME = 5_000_000_000_000_000  # microseconds: within a century of the epoch

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
    type: str  # as declared in the migrations
    rule: Rule = "key"
    default: Any = None  # used when a merged row still has no value
    required: bool = False  # every record of the table must give it (key columns always do)

    def __post_init__(self) -> None:
        if self.rule not in get_args(Rule):
            raise ValueError(f"column {self.name!r}: no merge rule {self.rule!r}; "
                             f"choose one of {get_args(Rule)}")

    @property
    def needed(self) -> bool:
        return self.rule == "key" or self.required

    @functools.cached_property
    def prepare(self) -> Callable[[Any], Any]:
        """A value as stored, checked against this column's type: raises :class:`ColumnError`."""
        check = _checker(self.type)
        if self.rule == "merge":  # merged by joining JSON objects: anything else is wrapped
            return lambda value: check(value if isinstance(value, dict) else {"value": value})
        return check

    @functools.cached_property
    def wire_type(self) -> Any:
        """The type a record's value must have on the wire (msgpack), as msgspec checks it:
        what passes needs no other check here but text cleaning and jsonb encoding."""
        wire = _wire_type(self.type, self.needed)
        return wire if self.needed else Optional[wire]  # noqa: UP045 (a runtime type object)


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
    def column_names(self) -> list[str]:
        """The column names in row order."""
        return [c.name for c in self.columns]

    @functools.cached_property
    def position(self) -> dict[str, int]:
        """Each column's place in a :data:`Row`."""
        return {c.name: i for i, c in enumerate(self.columns)}

    @functools.cached_property
    def required(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.needed)

    @functools.cached_property
    def key_of(self) -> Callable[[Row], Any]:
        """A row's key (a value, or a tuple of values for a key of several columns)."""
        return operator.itemgetter(*(self.position[k] for k in self.key))

    @property
    def stage(self) -> str:
        return f"stage_{self.name}"

    def as_dict(self, row: Row) -> dict[str, Any]:
        """A row with its column names, to quarantine or show."""
        return dict(zip(self.column_names, row, strict=True))

    def merge(self, old: Row, new: Row) -> Row:
        return tuple(RULES[c.rule][0](o, n) if c.rule != "key" else o
                     for c, o, n in zip(self.columns, old, new, strict=True))

    def prepare(self, values: dict[str, Any]) -> Row:
        """The row of a record's values (jsonb encoded, text cleaned), every value checked
        against its column's declared type; raises :class:`ColumnError` naming the column."""
        row = []
        for column in self.columns:
            value = values.get(column.name)
            if value is not None:
                try:
                    value = column.prepare(value)
                except ColumnError as exc:
                    raise ColumnError(f"{self.name}.{column.name}: {exc}") from None
            row.append(value)
        return tuple(row)

    @functools.cached_property
    def _texts(self) -> tuple[int, ...]:
        return tuple(i for i, c in enumerate(self.columns) if c.type == "text")

    @functools.cached_property
    def _jsonb(self) -> tuple[tuple[int, bool], ...]:
        return tuple((i, c.rule == "merge") for i, c in enumerate(self.columns)
                     if c.type == "jsonb")

    def finish(self, values: Sequence[Any]) -> Row:
        """The row of values msgspec already checked against :attr:`Column.wire_type`: text
        cleaned, jsonb encoded. Raises :class:`NotFast` for a jsonb value the fast encoder
        does not take as :func:`jsonb_text` would (the caller then takes that path)."""
        row = list(values)
        for i in self._texts:
            text = row[i]
            if text is not None and "\x00" in text:
                row[i] = clean_text(text)
        for i, wrap in self._jsonb:
            value = row[i]
            if value is not None:
                row[i] = fast_jsonb_text({"value": value} if wrap and type(value) is not dict
                                         else value)
        return tuple(row)

    @functools.cached_property
    def _defaults(self) -> tuple[tuple[int, Any], ...]:
        return tuple((i, c.default) for i, c in enumerate(self.columns) if c.default is not None)

    def with_defaults(self, row: Row) -> Row:
        """The row with each empty column that has a default filled (after merging, so that a
        default never wins over a value another piece of the row brings)."""
        filled: list[Any] | None = None
        for i, default in self._defaults:
            if row[i] is None:
                if filled is None:
                    filled = list(row)
                filled[i] = default
        return row if filled is None else tuple(filled)

    @functools.cached_property
    def create_stage_sql(self) -> str:
        cols = ", ".join(f'"{c.name}" {c.type}' for c in self.columns)
        return (f"CREATE TEMP TABLE IF NOT EXISTS {self.stage} ({cols}, ord integer) "
                "ON COMMIT DELETE ROWS")

    @functools.cached_property
    def upsert_sql(self) -> str:
        """Staged rows into the table, merged by the rules; answers how many were new."""
        names = ", ".join(f'"{name}"' for name in self.column_names)
        updates = ", ".join(
            f'"{c.name}" = ' + RULES[c.rule][1].format(c=f'"{c.name}"')
            for c in self.columns if c.rule != "key"
        )
        key = ", ".join(f'"{k}"' for k in self.key)
        return (
            f"WITH written AS (INSERT INTO {self.name} AS t ({names}) "
            f"SELECT {names} FROM {self.stage} ORDER BY ord "
            f"ON CONFLICT ({key}) DO UPDATE SET {updates} RETURNING (xmax = 0) AS inserted) "
            "SELECT count(*) FILTER (WHERE inserted) AS inserted, count(*) AS total FROM written"
        )

    @functools.cached_property
    def stage_columns(self) -> list[str]:
        return [*self.column_names, "ord"]


_EMPTY = "{}"


def clean_text(value: str) -> str:
    """Text PostgreSQL accepts: it cannot hold NUL."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


class NotFast(ValueError):
    """A jsonb value for :func:`jsonb_text`'s careful path (orjson refuses it, or would write
    it differently: NaN, NUL)."""


def fast_jsonb_text(value: Any) -> str:
    """:func:`jsonb_text` for the common value, in C (orjson); raises :class:`NotFast` for
    any other. orjson refuses what is nested 255 levels deep (below :data:`JSONB_MAX_DEPTH`),
    integers beyond 64 bits, keys that are not text and values JSON has no type for."""
    try:
        text: str = _orjson_dumps(value, None, orjson.OPT_PASSTHROUGH_DATETIME).decode()
    except TypeError:  # orjson.JSONEncodeError
        raise NotFast from None
    # orjson writes NaN and infinities as null; and PostgreSQL's jsonb holds no NUL. (Searched
    # in text, not bytes: ``in`` on bytes first tries its argument as an integer, and costs
    # more than orjson itself.)
    if ("\\" in text and "\\u0000" in text) or ("null" in text and _has_non_finite(value)):
        raise NotFast
    return text


_orjson_dumps = orjson.dumps


def _has_non_finite(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


# One encoder for every call: ``json.dumps`` with options builds a new one each time.
_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


def jsonb_text(value: Any) -> str:
    """JSON text PostgreSQL's jsonb accepts: no NUL (not even escaped), no NaN, text keys, at
    most :data:`JSONB_MAX_DEPTH` levels deep; raises :class:`ColumnError` otherwise.

    orjson first; what it refuses or would write differently (integers beyond 64 bits, keys
    that are not text, NaN, ...) takes Python's encoder, which writes anything as text."""
    try:
        return fast_jsonb_text(value)
    except NotFast:
        pass
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


def _number_bound(declared: str) -> float | None:
    if declared in ("float8", "double precision"):
        return math.inf
    if numeric := _NUMERIC.fullmatch(declared):
        precision, scale = map(int, numeric.groups())
        return 10.0 ** (precision - scale)
    return None


def _checker(declared: str) -> Callable[[Any], Any]:
    if declared in _INTEGER_BITS:
        return functools.partial(_check_integer, 1 << (_INTEGER_BITS[declared] - 1), declared)
    if (bound := _number_bound(declared)) is not None:
        return functools.partial(_check_number, bound, declared)
    if declared == "text":
        return _check_text
    if declared == "jsonb":
        return jsonb_text
    if declared == "uuid":
        return _check_uuid
    if declared == "timestamptz":
        return _check_time
    raise ValueError(f"no check for the column type {declared!r}: add one to tables.py")


def _wire_type(declared: str, needed: bool) -> Any:
    """The msgspec type of :func:`_checker`'s accepted values, strictly: what a check would
    change (text to clean or cut) or what it would refuse fails msgspec's validation."""
    if declared in _INTEGER_BITS:
        bound = 1 << (_INTEGER_BITS[declared] - 1)
        return Annotated[int, msgspec.Meta(ge=-bound, le=bound - 1)]
    if (limit := _number_bound(declared)) is not None:
        return Annotated[float, msgspec.Meta(gt=-limit, lt=limit)]
    if declared == "text":  # a required text may not be empty
        return Annotated[str, msgspec.Meta(min_length=int(needed), max_length=MAX_TEXT)]
    if declared == "jsonb":
        return Any
    if declared == "uuid":
        return Annotated[bytes, msgspec.Meta(min_length=16, max_length=16)]
    if declared == "timestamptz":
        return Annotated[int, msgspec.Meta(gt=0, lt=MAX_TIME)]
    raise ValueError(f"no wire type for the column type {declared!r}: add one to tables.py")


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


def _check_uuid(value: Any) -> bytes:
    if not isinstance(value, bytes) or len(value) != 16:
        raise ColumnError(f"an id is 16 bytes, not {value!r}"[:200])
    return value


def _check_time(value: Any) -> int:
    # Within a century of the epoch's microseconds: anything else is a unit mix-up.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < MAX_TIME:
        raise ColumnError(f"a time is integer microseconds since the epoch, not {value!r}"[:200])
    return value


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
