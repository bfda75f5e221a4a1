"""``python -m benchmarks.ag2_v1 [--rounds N] [--turns N]``: AG2 1.x capture overhead.

Issue 13's goal: "per captured turn and tool call, the same budget as classic capture
(benchmark beside AG2's own TelemetryMiddleware with an exporter that discards)". The classic
capture's budget (benchmarks part 1) is a third of what the OpenTelemetry instrumentation of
the same call costs; here that instrumentation is AG2's own ``TelemetryMiddleware``, on the
same calls, with an exporter that discards. So the goal is: ours adds at most a third of what
``TelemetryMiddleware`` adds, per turn and per tool call.

Needs a venv with ``ag2`` 1.x, ``genai-prices`` and ``opentelemetry-sdk`` (not the bench
extra, which holds the classic AG2). Three middlewares are timed side by side in each round,
in rotated order: AG2's no-op ``BaseMiddleware`` (the baseline), ``TelemetryMiddleware`` with
an exporter that discards, and our capture middleware with a tracker whose sink discards
(events and spans are frozen and priced on the caller's thread, as in production; the
sender thread, which makes a span's records, is left out, as the exporter is). Two
workloads, on a real ``MemoryStream`` context, with a model and a tool that answer at once:

- a turn: what AG2 does with an agent's middleware, an instance for the turn and its
  ``on_turn`` around two ``on_llm_call``\\ s and one ``on_tool_execution`` (ours includes the
  conversation span the turn opens, cost rows and pricing; ``TelemetryMiddleware``'s includes
  the usage subscription it makes each turn);
- a tool call: ``on_tool_execution`` alone, many inside one turn.

Figures: the time each adds over the baseline (medians over rounds, interquartile range in
brackets) and the ratio of ours to ``TelemetryMiddleware``'s, against the goal. For
information, each round also times one bare OpenTelemetry span carrying one call's facts
(part 1's unit) and divides ours per captured call (a fourth of a turn's) by it.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ag2 import MemoryStream
from ag2.context import ConversationContext
from ag2.events import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextInput,
    ToolCallEvent,
    ToolCallsEvent,
    ToolResultEvent,
    Usage,
)
from ag2.middleware import BaseMiddleware
from ag2.middleware.builtin.telemetry import TelemetryMiddleware
from ag2.tools import ToolResult
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from agent_shim.ag2_v1.capture import CaptureFactory, Runtime
from agent_shim.config import ShimSettings
from agent_shim.testing import DiscardingSink
from agent_shim.tracker import Tracker

from .stats import Summary, ratios

Factory = Callable[[Any, Any], BaseMiddleware]

USAGE = Usage(prompt_tokens=100, completion_tokens=20, total_tokens=120)
CALL = ToolCallEvent("add", arguments='{"a": 1, "b": 2}')
TOOL_TURN = ModelResponse(tool_calls=ToolCallsEvent([CALL]), usage=USAGE, model="gpt-4o-mini",
                          provider="openai", finish_reason="tool_calls")
FINAL = ModelResponse(ModelMessage("3"), usage=USAGE, model="gpt-4o-mini", provider="openai",
                      finish_reason="stop")
RESULT = ToolResultEvent(parent_id=CALL.id, name="add", result=ToolResult("3"))
REQUEST = ModelRequest([TextInput("Add 1 and 2.")])


class Discard(SpanExporter):  # type: ignore[misc]
    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


#: Hook calls captured per turn: the turn, two LLM calls, one tool call.
CAPTURED_CALLS = 4
#: The classic capture's budget (benchmarks part 1): a third of the OpenTelemetry
#: instrumentation of the same call; issue 13 sets it for 1.x against TelemetryMiddleware.
GOAL = 1 / 3


def tracer_provider() -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Discard()))
    return provider


def factories(provider: TracerProvider) -> dict[str, Factory]:
    tracker = Tracker(ShimSettings(collector_urls=("inproc://discard",)), DiscardingSink())
    return {"baseline": BaseMiddleware,
            "otel": TelemetryMiddleware(tracer_provider=provider, agent_name="assistant"),
            "ours": CaptureFactory("assistant", Runtime(tracker))}


def time_spans(tracer: Any, spans: int) -> float:
    """Seconds per OpenTelemetry span carrying one call's facts (part 1's baseline, the unit of
    the classic capture's budget), with the same discarding exporter."""
    message = "Add 1 and 2."
    started = time.perf_counter()
    for _ in range(spans):
        with tracer.start_as_current_span("llm_call") as span:
            span.set_attribute("gen_ai.agent.name", "assistant")
            span.set_attribute("input.value", message)
            span.set_attribute("input.messages", 1)
            span.set_attribute("output.value", "3")
    return (time.perf_counter() - started) / spans


async def _model_tool_turn(events: Any, context: Any) -> ModelResponse:
    return TOOL_TURN


async def _model_final(events: Any, context: Any) -> ModelResponse:
    return FINAL


async def _tool(event: Any, context: Any) -> ToolResultEvent:
    return RESULT


async def time_turns(factory: Factory, turns: int) -> float:
    """Seconds per turn through ``factory``'s middleware."""
    context = ConversationContext(stream=MemoryStream())
    history = [REQUEST]

    started = time.perf_counter()
    for _ in range(turns):
        middleware = factory(REQUEST, context)

        async def turn(event: Any, context: Any, middleware: BaseMiddleware = middleware) -> Any:
            await middleware.on_llm_call(_model_tool_turn, history, context)
            await middleware.on_tool_execution(_tool, CALL, context)
            return await middleware.on_llm_call(_model_final, history, context)

        await middleware.on_turn(turn, REQUEST, context)
    return (time.perf_counter() - started) / turns


async def time_tool_calls(factory: Factory, calls: int) -> float:
    """Seconds per tool call through ``factory``'s middleware (``calls`` of them in a turn)."""
    context = ConversationContext(stream=MemoryStream())
    middleware = factory(REQUEST, context)

    async def turn(event: Any, context: Any) -> Any:
        for _ in range(calls):
            await middleware.on_tool_execution(_tool, CALL, context)
        return FINAL

    started = time.perf_counter()
    await middleware.on_turn(turn, REQUEST, context)
    return (time.perf_counter() - started) / calls


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ag2_v1", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--turns", type=int, default=2000,
                        help="turns, and tool calls, per middleware and round")
    args = parser.parse_args()
    provider = tracer_provider()
    middlewares = factories(provider)
    tracer = provider.get_tracer("bench")
    variants: dict[str, Callable[[int], float]] = {}
    for name, factory in middlewares.items():
        variants[f"turn {name}"] = functools.partial(_run, time_turns, factory)
        variants[f"tool {name}"] = functools.partial(_run, time_tool_calls, factory)
    variants["otel span"] = functools.partial(time_spans, tracer)
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # warm-up: imports (the price table) and first-use caches
        variants[name](10)
    for round_number in range(args.rounds):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(variants[name](args.turns))
    print(f"AG2 1.x capture beside AG2's TelemetryMiddleware (exporter that discards), "
          f"{args.rounds} rounds x {args.turns}; time added to AG2's no-op BaseMiddleware")
    per_turn = _compare("per turn (2 LLM calls, 1 tool call)", "turn", times)
    _compare("per tool call", "tool", times)
    per_call = [t / CAPTURED_CALLS for t in per_turn]
    print("information: ours per captured call beside one bare OTel span (part 1's unit)")
    print(f"  ours per captured call       {Summary.of(per_call).scaled(1e6).format(' us')}")
    print(f"  one OTel span                "
          f"{Summary.of(times['otel span']).scaled(1e6).format(' us')}")
    print(f"  per call / OTel span         {ratios(per_call, times['otel span']).format()}")


def _compare(title: str, workload: str, times: dict[str, list[float]]) -> list[float]:
    """Print what ours and TelemetryMiddleware add to ``workload`` and the ratio against the
    goal; return what ours adds, per round."""
    base = times[f"{workload} baseline"]
    added = {name: [t - b for t, b in zip(times[f"{workload} {name}"], base, strict=True)]
             for name in ("otel", "ours")}
    ratio = ratios(added["ours"], added["otel"])
    verdict = "met" if ratio.median <= GOAL else "MISSED"
    print(title)
    print(f"  baseline (BaseMiddleware)    {Summary.of(base).scaled(1e6).format(' us')}")
    print(f"  + TelemetryMiddleware        {Summary.of(added['otel']).scaled(1e6).format(' us')}")
    print(f"  + cmbagent capture           {Summary.of(added['ours']).scaled(1e6).format(' us')}")
    print(f"  ours / TelemetryMiddleware   {ratio.format()}  (goal <= {GOAL:.2f}, the classic "
          f"budget: {verdict})")
    return added["ours"]


def _run(workload: Callable[[Factory, int], Awaitable[float]], factory: Factory,
         count: int) -> float:
    return asyncio.run(workload(factory, count))


if __name__ == "__main__":
    main()
