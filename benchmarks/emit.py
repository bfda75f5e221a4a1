"""Part 1: what one captured AG2 call costs the caller, next to an OpenTelemetry span.

Ours: the real AG2 hook (``agent_shim.ag2.wrapping.Hook`` around ``generate_reply``'s
signature, with the real ``AgentCall`` activity) on a live tracker whose sender is connected to
a running collector: the wrapped call, the start and end records, their payload snapshots and
the enqueue. OpenTelemetry: the same no-op method wrapped in ``start_as_current_span`` with the
same facts as attributes (message as JSON, as OpenTelemetry instrumentations record it), a
``BatchSpanProcessor`` whose exporter discards (its queue raised to ours, 100,000, so neither
drops). Both background threads run during the measurement. Each call is timed on its own; the
cost is the wrapped call's time minus the bare call's median (the clock's own overhead).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from .harness import Bench, collector, rotated
from .report import Result
from .stats import Summary, percentile, ratios

GOAL = 1 / 3
MESSAGE = {"role": "user", "name": "user",
           "content": "Compute the angular power spectrum of the CMB map and plot it. " * 8}


class _Agent:
    """What AG2's ``generate_reply`` hook reads from an agent."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._oai_messages: dict[Any, Any] = {}


def generate_reply(agent: Any, messages: Any = None, sender: Any = None) -> str:
    return "done"


def ours(tracker: Any) -> Callable[..., Any]:
    from agent_shim.ag2.activities import AgentCall
    from agent_shim.ag2.wrapping import Hook, Runtime

    return Hook("ConversableAgent.generate_reply", AgentCall(), Runtime(tracker)).wrap(
        generate_reply)


def opentelemetry(tracer: Any) -> Callable[..., Any]:
    def wrapper(agent: Any, messages: Any = None, sender: Any = None) -> Any:
        with tracer.start_as_current_span("agent_call") as span:
            span.set_attribute("gen_ai.agent.name", agent.name)
            span.set_attribute("sender", sender.name)
            span.set_attribute("input.value", json.dumps(messages[-1]))
            span.set_attribute("input.messages", len(messages))
            result = generate_reply(agent, messages, sender)
            span.set_attribute("output.value", result)
            return result

    return wrapper


def time_calls(function: Callable[..., Any], calls: int) -> list[int]:
    """Nanoseconds of each call, timed one by one."""
    clock = time.perf_counter_ns
    agent, sender, messages = _Agent("assistant"), _Agent("user"), [MESSAGE]
    samples = [0] * calls
    for i in range(calls):
        started = clock()
        function(agent, messages, sender)
        samples[i] = clock() - started
    return samples


def run(bench: Bench) -> list[Result]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    from agent_shim.sender import Sender
    from agent_shim.tracker import Tracker

    class Discard(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    rounds, calls = bench.scale(15, 6), bench.scale(5_000, 3_000)
    dsn = bench.database("emit")
    with collector(bench, dsn) as process:
        settings = bench.settings(process.url)
        tracker = Tracker(settings, Sender(settings))
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Discard(), max_queue_size=100_000))
        variants: dict[str, tuple[Callable[..., Any], Callable[[], Any]]] = {
            "bare": (generate_reply, lambda: None),
            "ours": (ours(tracker), lambda: tracker.flush(30)),
            "otel": (opentelemetry(provider.get_tracer("bench")), provider.force_flush),
        }
        for function, settle in variants.values():  # warm up: caches, threads, connections
            time_calls(function, 500)
            settle()
        p50: dict[str, list[float]] = {name: [] for name in variants}
        p99: dict[str, list[float]] = {name: [] for name in variants}
        for round_number in range(rounds):
            for name in rotated(list(variants), round_number):
                function, settle = variants[name]
                samples = time_calls(function, calls)
                settle()  # not timed: the background thread finishes this block's work
                p50[name].append(percentile(samples, 50))
                p99[name].append(percentile(samples, 99))
        delivered = tracker.flush(30)
        tracker.shutdown(5)
        provider.shutdown()
    clock = p50["bare"]
    cost = {name: {"p50": [v - c for v, c in zip(p50[name], clock, strict=True)],
                   "p99": [v - c for v, c in zip(p99[name], clock, strict=True)]}
            for name in ("ours", "otel")}
    results = []
    for q in ("p50", "p99"):
        ratio = ratios(cost["ours"][q], cost["otel"][q])
        results.append(Result(
            "1 emit", f"captured call, caller's cost {q}",
            Summary.of(cost["ours"][q]).scaled(1e-3).format(" µs"),
            "OTel span " + Summary.of(cost["otel"][q]).scaled(1e-3).format(" µs"),
            ratio, "≤ 0.33 × OTel", ratio.median <= GOAL,
            note="" if q == "p99" or delivered else "the tracker did not deliver everything"))
    return results
