"""Real AG2 1.x conversations (AG2's scripted model, no network) captured exactly once each."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path, PurePosixPath

import genai_prices
import pytest
import scenarios
from ag2 import MemoryStream
from ag2.context import ConversationContext
from ag2.events import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TaskCompleted,
    TaskStarted,
    TextInput,
    ToolNotFoundEvent,
    ToolResultsEvent,
)
from ag2.tools.sandbox.adapter import CodeAdapter
from ag2_checks import rows_from_records
from checks import check_v1_capture

from agent_shim import ag2_v1
from agent_shim.ag2_v1.capture import CaptureFactory, Runtime
from agent_shim.ag2_v1.pricing import PriceTable, Tokens
from agent_shim.testing import recording_tracker

REPO = Path(__file__).resolve().parents[2]


def check_scenario(name: str, capture) -> None:
    """Run scenario ``name`` in a run of the capture fixture's tracker and check its records."""
    tracker, sink = capture
    with tracker.run(name) as run:
        expected = asyncio.run(scenarios.SCENARIOS[name]())

    events, costs, problems = rows_from_records(sink.records)
    problems += check_v1_capture(events, costs, json.loads(expected.to_json()), scenarios.SECRET,
                                 run=run.id)
    if scenarios.SECRET in json.dumps(sink.records, default=repr):
        problems.append("the planted secret is in a serialised record")
    assert ag2_v1.disabled_hooks() == []
    assert problems == []
    assert sum(ag2_v1.unpriced().values()) == expected.usage.unpriced


@pytest.mark.parametrize("name", list(scenarios.SCENARIOS))
def test_scenario_is_captured_exactly_once(name, capture):
    check_scenario(name, capture)


class TestPricing:
    def test_anthropic_cache_tokens_are_billed_beside_the_prompt(self):
        # Anthropic reports input tokens without cache reads and writes; each is billed at its
        # own list price: $3 input, $0.30 cache read, $3.75 cache write, $15 output per MTok.
        tokens = Tokens(prompt=1000, completion=100, cached=2000, cache_write=500)
        price = PriceTable().price("anthropic", "claude-sonnet-4-5", tokens)
        assert price.cost_usd == pytest.approx(
            (1000 * 3 + 2000 * 0.3 + 500 * 3.75 + 100 * 15) / 1e6)
        assert price.record["status"] == "priced"
        assert price.record["version"] == genai_prices.__version__

    def test_an_unknown_model_gets_no_cost_and_one_counted_warning(self, caplog):
        table = PriceTable()
        for _ in range(3):
            price = table.price("openai", "house-model-7", Tokens(prompt=10, completion=1))
            assert price.cost_usd is None
            assert price.record == {"table": "genai-prices", "version": genai_prices.__version__,
                                    "status": "unknown model"}
        assert table.unpriced() == {"unknown model: house-model-7": 3}
        assert len([r for r in caplog.records if "house-model-7" in r.getMessage()]) == 1

    def test_counts_that_are_no_number_are_not_reported(self):
        from ag2.events import Usage

        tokens = Tokens.of(Usage(prompt_tokens=float("inf"), completion_tokens=5.0,
                                 thinking_tokens=float("nan")))
        assert tokens == Tokens(prompt=None, completion=5, total=None, reasoning=None)

    def test_a_call_without_tokens_is_not_priced(self):
        price = PriceTable().price("openai", "gpt-4o-mini", Tokens())
        assert price.cost_usd is None and price.record["status"] == "no model or no tokens"


class TestSafety:
    def test_a_failure_of_ours_disables_capture_and_the_program_goes_on(self, capture):
        tracker, sink = capture

        def broken_start_span(*args, **kwargs):
            raise RuntimeError("our bug")

        tracker.start_span = broken_start_span  # type: ignore[method-assign]
        expected = asyncio.run(scenarios.parallel_tools())
        assert expected.counts["tool_call"] == 4  # the program ran as scripted
        assert ag2_v1.disabled_hooks() == ["agent_call"]
        assert [r for r in sink.records if r["k"] == "event"] == []

    def test_agents_built_after_uninstall_are_not_captured(self, capture):
        tracker, sink = capture
        ag2_v1.uninstall()
        asyncio.run(scenarios.parallel_tools())
        assert [r for r in sink.records if r["k"] == "event"] == []
        assert ag2_v1.install(tracker)  # for the fixture's uninstall


class UnreachableSandbox:
    """A sandbox backend whose every execution fails (a remote one that went away)."""

    workdir = PurePosixPath("/workspace")
    host_workdir = None

    async def __aenter__(self) -> UnreachableSandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def exec(self, argv: list[str], **kwargs: object) -> None:
        raise ConnectionError("sandbox unreachable")


def test_a_sandbox_failure_fails_its_code_exec_and_reaches_the_program_unchanged(capture):
    tracker, sink = capture
    adapter = CodeAdapter(UnreachableSandbox(), languages=("bash",))
    with pytest.raises(ConnectionError, match="^sandbox unreachable$"):
        asyncio.run(adapter.run("echo 1", "bash"))

    events, _, problems = rows_from_records(sink.records)
    assert problems == []
    assert [(e["event_type"], e["event_subtype"], e["status"], e["error_message"], e["inputs"])
            for e in events] == [
        ("code_exec", "code", "failed", "ConnectionError: sandbox unreachable",
         {"language": "bash", "code": "echo 1"})]
    assert ag2_v1.disabled_hooks() == []


class TestAutoload:
    def _python(self, code: str, **env: str) -> list[str]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("CMBAGENT_")}
        environ.update(PYTHONPATH=str(REPO), **env)
        result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=environ,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout.split()

    def test_importing_ag2_installs_capture(self, tmp_path):
        assert self._python("""
            import sys
            import agent_shim._autoload
            assert "ag2" not in sys.modules, "autoload must not import AG2"
            import ag2
            from agent_shim import ag2_v1
            agent = ag2.Agent("a")
            print(ag2_v1.installed(), type(agent.middleware[0].middleware).__name__)
            """, CMBAGENT_COLLECTOR_URL="tcp://127.0.0.1:9", CMBAGENT_SPOOL_DIR=str(tmp_path),
            CMBAGENT_EXIT_TIMEOUT="0.1") == ["True", "CaptureFactory"]

    def test_nothing_is_patched_without_the_variable(self):
        assert self._python("""
            import ag2
            from agent_shim import ag2_v1
            print(ag2_v1.install(), ag2_v1.installed(), len(ag2.Agent("a").middleware))
            """) == ["False", "False", "0"]


def test_flat_rates_price_a_call_as_the_table_itself_does():
    tokens = Tokens(prompt=12_000, completion=900, cached=4_000)
    ours = PriceTable().price("openai", "gpt-4o-mini", tokens).cost_usd
    theirs = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=12_000, output_tokens=900, cache_read_tokens=4_000),
        "gpt-4o-mini", provider_id="openai").total_price
    assert ours == pytest.approx(float(theirs), rel=1e-12)


class TestHistoryReading:
    """What no hook sees (sub-task events, unknown tools) is read from the history AG2 hands
    each LLM call: every such event once, wherever and whenever it lands."""

    STARTED = TaskStarted(task_id="t1", agent_name="worker", objective="Rebuild the index",
                          parent_tool_call_id="c1")
    COMPLETED = TaskCompleted(task_id="t1", agent_name="worker", objective="Rebuild the index",
                              result="Index rebuilt.")

    def _llm_calls(self, *histories: list) -> list[tuple]:
        """One LLM call of the coordinator per history (all of one conversation); the
        messages and unknown-tool calls recorded, in order."""
        tracker, sink = recording_tracker()
        context = ConversationContext(stream=MemoryStream())
        middleware = CaptureFactory("coordinator", Runtime(tracker))(REQUEST, context)

        async def model(events, context):
            return ModelResponse(ModelMessage("ok"))

        async def calls():
            for history in histories:
                await middleware.on_llm_call(model, history, context)

        asyncio.run(calls())
        events, _, problems = rows_from_records(sink.records)
        assert problems == []
        return [(e["event_subtype"], e["agent_name"], (e["inputs"] or {}).get("recipient"))
                for e in events if e["event_type"] != "llm_call"]

    def test_a_task_started_after_the_tool_results_is_read(self):
        # A background task's TaskStarted, sent from its own task, may land after the tool
        # round's results (this was missed when only a history ending in results was read).
        history = [REQUEST, ASKED, RESULTS, self.STARTED]
        assert self._llm_calls(history) == [("task_started", "coordinator", "worker")]

    def test_a_task_started_during_an_llm_call_is_read_at_the_next_one(self):
        history = [REQUEST, ASKED, RESULTS]
        first = list(history)
        later = [*history, self.STARTED, ModelResponse(ModelMessage("Started it.")),
                 self.COMPLETED]
        assert self._llm_calls(first, later) == [
            ("task_started", "coordinator", "worker"), ("task_completed", "worker", "coordinator")]

    def test_events_are_read_once_however_often_the_history_is_handed_over(self):
        history = [REQUEST, ASKED, RESULTS, self.STARTED]
        assert self._llm_calls(history, history, history) == [
            ("task_started", "coordinator", "worker")]

    def test_a_rewritten_history_is_read_from_its_last_model_response(self):
        # Compaction replaces the history (another list): what precedes the last model
        # response was answered by an earlier call and is not read again.
        history = [REQUEST, ASKED, RESULTS, self.STARTED]
        compacted = [ModelRequest([TextInput("Summary.")]), self.STARTED,
                     ModelResponse(ModelMessage("Started it.")), self.COMPLETED]
        assert self._llm_calls(history, compacted) == [
            ("task_started", "coordinator", "worker"), ("task_completed", "worker", "coordinator")]

    def test_an_unknown_tool_is_a_failed_tool_call_once(self):
        results = ToolResultsEvent(results=[ToolNotFoundEvent(parent_id="c9", name="no_such")])
        history = [REQUEST, ASKED, results]
        assert self._llm_calls(history, [*history]) == [("unknown_tool", "coordinator", None)]


REQUEST = ModelRequest([TextInput("Rebuild the index.")])
ASKED = ModelResponse(None)
RESULTS = ToolResultsEvent(results=[])


class TestHubListener:
    """What the hub reports that went wrong, fed to the capture listener as the hub calls it."""

    def _listener(self):
        from agent_shim.ag2_v1.network import CaptureListener  # imports ag2.network (opt-in)

        tracker, sink = recording_tracker()
        return CaptureListener(Runtime(tracker), hub=None), sink

    def test_a_failed_dispatch_is_a_failed_message_to_the_recipient(self):
        from ag2.network import Envelope

        listener, sink = self._listener()
        listener.names.update(a1="lead", a2="far")
        envelope = Envelope(channel_id="c1", sender_id="a1", audience=None,
                            event_type="ag2.msg.text", event_data={"text": "hello"},
                            envelope_id="e1")
        asyncio.run(listener.on_dispatch_failed(envelope, "a2", LookupError("no remote proxy")))
        events, _, problems = rows_from_records(sink.records)
        assert problems == []
        assert [(e["event_type"], e["event_subtype"], e["agent_name"], e["status"],
                 e["error_message"], e["inputs"]["recipient"], e["meta"]["envelope_id"])
                for e in events] == [("message", "dispatch_failed", "lead", "failed",
                                      "LookupError: no remote proxy", "far", "e1")]

    def test_unknown_channels_and_agents_are_recorded_as_the_hub_names_them(self):
        # A notice about a channel that was never seen opening (another process's hub, or
        # one opened before install) has no parent: it goes in the run; unknown agent ids are
        # kept as they are.
        listener, sink = self._listener()
        asyncio.run(listener.on_turn_failed("never-seen", "a9", "e9", RuntimeError("boom")))
        events, _, problems = rows_from_records(sink.records)
        assert problems == []
        assert [(e["event_subtype"], e["agent_name"], e["parent_event_id"], e["error_message"])
                for e in events] == [("turn_failed", "a9", None, "RuntimeError: boom")]

    def test_a_malformed_report_disables_the_listener_not_the_hub(self):
        # The hub calls listeners with its own objects; anything else (here an envelope that
        # is not one) is our failure: capture switches off, logged once, the hub goes on.
        listener, sink = self._listener()
        asyncio.run(listener.on_dispatch_failed(object(), "a2", RuntimeError("x")))
        assert listener.runtime.disabled == ["hub listener _dispatch_failed"]
        assert [r for r in sink.records if r["k"] == "event"] == []


@pytest.mark.parametrize("name", ["network_workflow", "network_graph"])
def test_routing_the_hub_has_folded_past_is_replayed_from_its_log(name, capture, monkeypatch):
    # When the hub accepts another envelope of the channel before telling listeners about this
    # one, its current state no longer shows where this one sent the channel: the capture
    # replays the channel's write-ahead log up to it. Here every envelope looks folded past.
    import dataclasses

    from agent_shim.ag2_v1.network import CaptureListener

    current = CaptureListener.current_state

    def folded_past(self, channel_id):
        state = current(self, channel_id)
        return dataclasses.replace(state, last_envelope_id="a later one") if state else state

    monkeypatch.setattr(CaptureListener, "current_state", folded_past)
    check_scenario(name, capture)


def test_event_fields_read_from_the_instance_are_ag2s_own():
    # The capture reads AG2 event fields from the instance's __dict__ (a tenth of the cost of
    # AG2's descriptors): on every supported release, each field it reads there must be what
    # AG2's own attribute gives. Something that is not an AG2 event has no fields to read.
    from ag2.events import ToolCallEvent, ToolCallsEvent, ToolResultEvent, Usage, UsageEvent
    from ag2.tools import ToolResult

    from agent_shim.ag2_v1.capture import fields

    usage = Usage(prompt_tokens=10, completion_tokens=2, total_tokens=12)
    call = ToolCallEvent("add", arguments='{"a": 1}')
    response = ModelResponse(ModelMessage("hi"), tool_calls=ToolCallsEvent([call]),
                             usage=usage, model="gpt-4o-mini", provider="openai",
                             finish_reason="stop")
    cases = [
        (response, ("provider", "model", "usage", "finish_reason", "tool_calls", "message")),
        (response.message, ("content",)), (response.tool_calls, ("calls",)),
        (call, ("id", "name", "arguments")), (REQUEST, ("parts",)),
        (REQUEST.parts[0], ("content",)),
        (ToolResultEvent(parent_id=call.id, name="add", result=ToolResult("2")), ("result",)),
        (UsageEvent(usage, kind="compaction", model="m", provider="p", finish_reason="stop"),
         ("provider", "model", "usage", "finish_reason", "kind")),
    ]
    for event, names in cases:
        for name in names:
            assert fields(event)[name] is getattr(event, name), (type(event).__name__, name)
    assert fields(object()) == {}
