"""Part 2: an offline AG2 workflow, capture off versus three ways of recording it.

The workflow is a real AG2 conversation driven by the scripted model client of
``tests/ag2/scenarios.py`` (so no network time hides the overhead): an assistant asks for a tool
call per turn, a user proxy executes it, for ``TURNS`` turns, then the assistant ends the chat.
Each round runs ``CHATS`` of them back to back per variant, in a rotating order, timed from
building the first chat's agents until what the variant recorded is handed over (ours: delivered
and acknowledged; AG2's OpenTelemetry: exported), so that no variant's work is left after the
clock stops; the times are per chat:

- ``off``: no hooks, nothing recorded;
- ``ours``: the AG2 hooks on a live tracker connected to a running collector;
- ``ours, nothing sent``: the same hooks on a tracker whose sink discards what it is handed (no
  sender thread): the agent thread's share of ours alone, the floor that delivery adds to;
- ``ag2 runtime_logging``: AG2's own logger to SQLite (started and stopped outside the timing);
- ``AG2 OpenTelemetry``: AG2's own OpenTelemetry instrumentation (``autogen.opentelemetry``:
  ``instrument_agent`` on both agents, ``instrument_llm_wrapper`` with its defaults) into a
  ``BatchSpanProcessor`` whose exporter discards: what the standard instrumentation of the same
  chat costs, with nothing stored;
- ``CMBAgent pattern``: the same hooks (so the same events) into a tracker whose sink does what
  CMBAgent's ``EventRepository`` does today: on the agent's thread, a SQLAlchemy ORM
  ``add`` + ``commit`` + ``refresh`` per new event, ``get`` + update + ``commit`` + ``refresh``
  per finished span, into PostgreSQL (a table shaped like CMBAgent's ``execution_events``).

The overhead of a variant is its time over ``off``'s in the same round, minus one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from .harness import Bench, collector, rotated
from .report import Result
from .stats import Summary, ratios

GOAL = 0.15
TURNS = 60
CHATS = 5
FLOOR = "ours, nothing sent"
_DEVNULL = open(os.devnull, "w")  # noqa: SIM115 (open for the process's lifetime)


def workflow(turns: int, instrument: Callable[[Any], Any] | None = None) -> None:
    """One chat of ``turns`` tool-call turns (about 6 events each when captured); AG2's console
    output goes to /dev/null in every variant. ``instrument`` is applied to each agent."""
    from autogen.agentchat import register_function

    from tests.ag2.scenarios import ScriptedAgent, call, ledger, user

    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    with ledger(), contextlib.redirect_stdout(_DEVNULL):
        assistant = ScriptedAgent("assistant", script=[
            *([call("add", a=i, b=i)] for i in range(turns)), "All added. TERMINATE"])
        proxy = user("user")
        register_function(add, caller=assistant, executor=proxy, description="Add two integers.")
        if instrument is not None:
            instrument(assistant)
            instrument(proxy)
        proxy.initiate_chat(assistant, message="Add these numbers, one call per turn.",
                            max_turns=turns + 2, silent=True)


# --- the CMBAgent pattern ----------------------------------------------------------------------


def orm_sink(dsn: str) -> Any:
    """A tracker sink writing like CMBAgent's EventRepository (synchronous ORM, commit per
    event)."""
    import msgpack
    from sqlalchemy import JSON, Column, DateTime, Integer, String, Text, create_engine
    from sqlalchemy.orm import Session, declarative_base

    from agent_shim import records

    Base = declarative_base()

    class ExecutionEvent(Base):  # type: ignore[misc,valid-type]
        """CMBAgent's ``execution_events`` columns and indexes (cmbagent/database/models.py)."""

        __tablename__ = "execution_events"
        id = Column(String(36), primary_key=True)
        run_id = Column(String(36), nullable=False, index=True)
        node_id = Column(String(36), index=True)
        session_id = Column(String(36), index=True)
        parent_event_id = Column(String(36), index=True)
        event_type = Column(String(50), nullable=False, index=True)
        event_subtype = Column(String(50))
        agent_name = Column(String(100), index=True)
        timestamp = Column(DateTime(timezone=True), nullable=False, index=True)
        started_at = Column(DateTime(timezone=True))
        completed_at = Column(DateTime(timezone=True))
        duration_ms = Column(Integer)
        inputs = Column(JSON)
        outputs = Column(JSON)
        error_message = Column(Text)
        meta = Column(JSON)
        execution_order = Column(Integer, nullable=False)
        depth = Column(Integer, nullable=False, default=0)
        status = Column(String(50), nullable=False, default="completed")

    engine = create_engine(dsn.replace("postgresql://", "postgresql+psycopg2://", 1))
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)

    def text(value: Any) -> str | None:
        return str(uuid.UUID(bytes=value)) if value else None

    def payload(value: Any) -> Any:
        return msgpack.unpackb(value, raw=False, strict_map_key=False) if value else None

    def when(ts: int) -> Any:
        from datetime import datetime, timezone

        return datetime.fromtimestamp(ts / 1e6, timezone.utc)

    class OrmSink:
        def __init__(self) -> None:
            self.session = Session(engine)
            self.order = 0

        def submit(self, record: dict[str, Any]) -> None:
            if record["k"] != "event":
                return  # runs, sessions, costs: CMBAgent writes those through other repositories
            session = self.session
            if record.get("completed_at") is not None:
                event = session.get(ExecutionEvent, text(record["id"]))
                if event is None:
                    return
                event.status = record["status"]
                event.completed_at = when(record["completed_at"])
                event.duration_ms = int((record["completed_at"] / 1e3)
                                        - event.started_at.timestamp() * 1e3)
                event.outputs = payload(record.get("outputs"))
                event.error_message = record.get("error_message")
            else:
                self.order += 1
                event = ExecutionEvent(
                    id=text(record["id"]), run_id=text(record["run_id"]),
                    node_id=text(record["node_id"]), session_id=text(record["session_id"]),
                    parent_event_id=text(record["parent_event_id"]),
                    event_type=record["event_type"], event_subtype=record.get("event_subtype"),
                    agent_name=record.get("agent_name"), timestamp=when(record["timestamp"]),
                    started_at=when(record["timestamp"]), inputs=payload(record.get("inputs")),
                    outputs=payload(record.get("outputs")), meta=payload(record.get("meta")),
                    execution_order=self.order, depth=record.get("depth") or 0,
                    status=record["status"])
                session.add(event)
            session.commit()
            session.refresh(event)

        def span_started(self, span: Any) -> None:
            self.submit(records.span_start(span))

        def span_ended(self, span: Any) -> None:
            self.submit(records.span_end(span))

        def flush(self, timeout: float) -> bool:
            return True

        def shutdown(self, timeout: float) -> bool:
            self.session.close()
            return True

        def forked(self) -> OrmSink:
            return OrmSink()

    return OrmSink(), engine


# --- AG2's own OpenTelemetry instrumentation ----------------------------------------------------


class Ag2OpenTelemetry:
    """AG2's instrumentation into a batch processor that discards; reversible (it patches
    ``OpenAIWrapper.create`` for the whole process and wraps each agent it is given)."""

    def __init__(self) -> None:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        class Discard(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        self.provider = TracerProvider()
        self.provider.add_span_processor(BatchSpanProcessor(Discard(), max_queue_size=100_000))

    def instrument(self, agent: Any) -> None:
        from autogen.opentelemetry import instrument_agent

        instrument_agent(agent, tracer_provider=self.provider)

    def install(self) -> None:
        from autogen.oai import client
        from autogen.opentelemetry import instrument_llm_wrapper

        self._create = client.OpenAIWrapper.create
        instrument_llm_wrapper(tracer_provider=self.provider)

    def uninstall(self) -> None:
        from autogen.oai import client

        client.OpenAIWrapper.create = self._create  # type: ignore[method-assign]


# --- the runs ----------------------------------------------------------------------------------


class Variant:
    """How one way of recording is switched on and off around a timed run (and what it does
    to each agent)."""

    def __init__(self, name: str, before: Any = None, after: Any = None,
                 instrument: Callable[[Any], Any] | None = None, *, settle: Any = None,
                 note: str = "", most_share: float | None = None) -> None:
        self.name = name
        self.before = before or (lambda: None)
        self.after = after or (lambda: None)
        #: Inside the timing, after the chats: hand over what was recorded.
        self.settle = settle or (lambda: None)
        self.instrument = instrument
        self.note = note
        #: The goal for ours' overhead as a share of this variant's (``None``: information).
        self.most_share = most_share


def run(bench: Bench) -> list[Result]:
    from autogen import runtime_logging

    import agent_shim.ag2 as capture
    from agent_shim.sender import LINGER_SECONDS, Sender
    from agent_shim.testing import DiscardingSink, recording_tracker
    from agent_shim.tracker import Tracker

    _quiet_ag2()
    capture.uninstall()  # a CMBAGENT_COLLECTOR_URL in our own environment must not hook AG2
    rounds = bench.scale(11, 5)
    events = _count_events(capture, recording_tracker)
    sqlite_path = bench.scratch / "ag2-runtime-logging.db"
    dsn = bench.database("workflow")
    orm, engine = orm_sink(bench.database("cmbagent_pattern", migrate=False))
    with collector(bench, dsn) as process:
        settings = bench.settings(process.url)
        ours = Tracker(settings, Sender(settings))
        unsent = Tracker(settings, DiscardingSink())
        legacy = Tracker(settings, orm)
        otel = Ag2OpenTelemetry()
        delivered: list[bool] = []
        variants = [
            Variant("off"),
            Variant(FLOOR, lambda: capture.install(unsent), capture.uninstall),
            Variant("ours", lambda: capture.install(ours), capture.uninstall,
                    settle=lambda: delivered.append(ours.flush(30))),
            logger := Variant("ag2 runtime_logging (SQLite)",
                              lambda: runtime_logging.start(logger_type="sqlite",
                                                            config={"dbname": str(sqlite_path)}),
                              runtime_logging.stop, most_share=0.2),
            Variant("CMBAgent pattern (SQLAlchemy)", lambda: capture.install(legacy),
                    capture.uninstall, note="same hooks, same events, one ORM commit each",
                    most_share=0.2),
            Variant("AG2 OpenTelemetry (discarding exporter)", otel.install, otel.uninstall,
                    otel.instrument, settle=otel.provider.force_flush,
                    note="AG2's spans kept nowhere; ours stored in PostgreSQL, redacted"),
        ]
        for variant in variants:  # warm up: imports, connections, caches
            variant.before()
            workflow(5, variant.instrument)
            variant.settle()
            variant.after()
        seconds: dict[str, list[float]] = {v.name: [] for v in variants}
        caller_cpu: dict[str, list[float]] = {"off": [], "ours": []}
        sender_cpu: list[float] = []  # ours: the sender thread's, from start to delivered
        sender_clock = _thread_clock(SENDER_THREAD)
        for round_number in range(rounds):
            for variant in rotated(variants, round_number):
                variant.before()
                sender_started = sender_clock()
                cpu_started = time.thread_time()
                started = time.perf_counter()
                for _ in range(CHATS):
                    workflow(TURNS, variant.instrument)
                variant.settle()
                seconds[variant.name].append((time.perf_counter() - started) / CHATS)
                if variant.name in caller_cpu:
                    caller_cpu[variant.name].append((time.thread_time() - cpu_started) / CHATS)
                variant.after()
                if variant.name == "ours":
                    sender_cpu.append((sender_clock() - sender_started) / CHATS)
                    # The sender thread polls for LINGER_SECONDS after the last record: the
                    # next variant must not run beside it.
                    time.sleep(LINGER_SECONDS + 0.1)
        delivered.append(ours.flush(30))
        ours.shutdown(5)
        legacy.shutdown(5)
        otel.provider.shutdown()
        engine.dispose()
    logger.note = f"AG2's logger wrote {_sqlite_rows(sqlite_path)} rows (its own set of records)"
    off = seconds["off"]
    overhead = {name: ratios(values, off) for name, values in seconds.items()}
    over = {name: Summary.of(v / o - 1 for v, o in zip(values, off, strict=True))
            for name, values in seconds.items()}
    ours_over = over["ours"]
    results = [Result("2 workflow", f"AG2 chat, {events} events: capture off",
                      Summary.of(off).scaled(1e3).format(" ms"))]
    for variant in variants[3:]:  # the others: ours' overhead as a share of theirs
        name = variant.name
        share = ratios([v - o for v, o in zip(seconds["ours"], off, strict=True)],
                       [v - o for v, o in zip(seconds[name], off, strict=True)])
        most = variant.most_share
        results.append(Result(
            "2 workflow", "overhead vs " + name.split(" (")[0],
            _percent(ours_over), _percent(over[name]), share,
            "-" if most is None else "small fraction",
            None if most is None else share.median <= most, note=variant.note))
    results.append(Result(
        "2 workflow", "ours' floor: hooks and records, nothing sent",
        Summary.of(seconds[FLOOR]).scaled(1e3).format(" ms"), "capture off (above)",
        overhead[FLOOR], note="information: the agent thread's part of ours, with a sink that "
        "discards; delivery adds the rest"))
    extra = [c - o for c, o in zip(caller_cpu["ours"], caller_cpu["off"], strict=True)]
    results.append(Result(
        "2 workflow", "where ours' time goes: agent CPU per chat",
        f"calling threads +{Summary.of(extra).scaled(1e3).format(' ms')}, "
        f"sender thread {Summary.of(sender_cpu).scaled(1e3).format(' ms')}",
        "chat alone " + Summary.of(caller_cpu["off"]).scaled(1e3).format(" ms"),
        ratios([e + t for e, t in zip(extra, sender_cpu, strict=True)], caller_cpu["off"]),
        note="information: both run under one GIL, so both add to the chat's time"))
    results.insert(1, Result(
        "2 workflow", "time with ours / capture off",
        Summary.of(seconds["ours"]).scaled(1e3).format(" ms"), "capture off (above)",
        overhead["ours"], f"≤ {1 + GOAL:.2f}", overhead["ours"].median <= 1 + GOAL,
        note="" if all(delivered) else "not everything was delivered"))
    return results


SENDER_THREAD = "cmbagent-tracking-sender"


def _thread_clock(name: str) -> Callable[[], float]:
    """CPU seconds used so far by the live thread called ``name`` (0 while there is none)."""

    def clock() -> float:
        for thread in threading.enumerate():
            if thread.name == name and thread.ident is not None:
                return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
        return 0.0

    return clock


def _percent(overhead: Summary) -> str:
    return "+" + overhead.scaled(100).format("%", digits=2)


def _quiet_ag2() -> None:
    """AG2's console output (a logging handler bound to stdout) goes to /dev/null."""
    logging.getLogger("autogen").setLevel(logging.WARNING)
    try:
        from autogen.logger.logger_utils import get_event_logger
    except ImportError:
        return
    for handler in get_event_logger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(_DEVNULL)


def _count_events(capture: Any, recording_tracker: Any) -> int:
    tracker, sink = recording_tracker()
    capture.install(tracker)
    try:
        workflow(TURNS)
    finally:
        capture.uninstall()
    return len({r["id"] for r in sink.records if r["k"] in ("event",)})


def _sqlite_rows(path: Any) -> int:
    try:
        with sqlite3.connect(path) as connection:
            tables = [r[0] for r in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")]
            return sum(connection.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                       for t in tables)
    except sqlite3.Error:
        return 0
