"""Real AG2 1.x programs, offline on AG2's own scripted model (``ag2.testing.TestConfig``).

Each scenario builds agents, runs them through AG2's own code paths and returns an
:class:`Expected`: the event counts its script implies, the failures, and the ledger of the
usage it scripted with the cost at the provider's list price (computed here, not by the shim).
Nothing here imports ``agent_shim``: run as a script (``python tests/ag2_v1/scenarios.py
<name>``) it is an unmodified AG2 1.x program, captured only if the package is installed and
CMBAGENT_COLLECTOR_URL is set; it prints the expectation as JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from ag2 import Agent, Context, TaskConfig
from ag2.aggregate import AggregateTrigger, ConversationSummaryAggregate
from ag2.compact import CompactTrigger, SummarizeCompact
from ag2.events import (
    ModelMessage,
    ModelResponse,
    ToolCallEvent,
    ToolCallsEvent,
    TranscriptionCompletedEvent,
    Usage,
    UsageEvent,
)
from ag2.knowledge import MemoryKnowledgeStore
from ag2.knowledge.config import KnowledgeConfig
from ag2.live import LiveAgent
from ag2.network import (
    EV_CHANNEL_CLOSED,
    WORKFLOW_TYPE,
    AgentTarget,
    BaseHubListener,
    Finish,
    FromSpeaker,
    Handoff,
    Hub,
    TerminateTarget,
    Transition,
    TransitionGraph,
)
from ag2.network.hub import Violation
from ag2.testing import TestClient, TestConfig
from ag2.tools import LocalEnvironment, SandboxCodeTool, SandboxShellTool
from ag2.tools.subagents import background_agent_tool

#: Planted in prompts and tool arguments; must never be recorded.
SECRET = "sk-test-PLANTED-SECRET-0123456789"

#: OpenAI's list prices, USD per million tokens: input, cached input, output.
LIST_PRICES = {"gpt-4o-mini": (0.15, 0.075, 0.60)}
#: A model no price table knows: its calls keep their tokens and get no cost.
UNKNOWN_MODEL = "house-model-7"


@dataclass
class Ledger:
    """What the script's model reported, summed, and what it costs at list price."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost: float = 0.0
    unpriced: int = 0

    def response(self, content: str | None = None, *calls: ToolCallEvent,
                 model: str = "gpt-4o-mini", prompt: int = 100, completion: int = 20,
                 cached: int = 0, reasoning: int = 0) -> ModelResponse:
        """One scripted model reply, entered in the ledger."""
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.total_tokens += prompt + completion
        if model in LIST_PRICES:
            per_input, per_cached, per_output = LIST_PRICES[model]
            self.cost += ((prompt - cached) * per_input + cached * per_cached
                          + completion * per_output) / 1e6
        else:
            self.unpriced += 1
        usage = Usage(prompt_tokens=prompt, completion_tokens=completion,
                      total_tokens=prompt + completion, cache_read_input_tokens=cached or None,
                      thinking_tokens=reasoning or None)
        return ModelResponse(ModelMessage(content) if content is not None else None,
                             tool_calls=ToolCallsEvent(list(calls)), usage=usage, model=model,
                             provider="openai", finish_reason="tool_calls" if calls else "stop")


@dataclass
class Expected:
    counts: dict[str, int]
    usage: Ledger
    failed: dict[str, int] = field(default_factory=dict)
    #: ``(child agent pattern, child type, parent type)``: where nested events must hang.
    nesting: list[tuple[str, str, str]] = field(default_factory=list)
    #: ``(from, subtype, to)`` of each handoff, in order.
    handoffs: list[tuple[str, str, str | None]] = field(default_factory=list)
    #: ``(subtype, exit code)`` of each ``code_exec``, sorted (a refused command has none).
    executions: list[tuple[str, int | None]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "usage": asdict(self.usage)})


def call(name: str, **arguments: Any) -> ToolCallEvent:
    return ToolCallEvent(name, arguments=json.dumps(arguments))


def config(*turns: Any) -> TestConfig:
    # A failed tool goes back to the model as a result, as with a real provider.
    return TestConfig(*turns, raise_tool_errors=False)


class AcrossTurns(TestConfig):
    """AG2's scripted model, read on from turn to turn (``TestConfig`` restarts its script at
    each turn; a network agent answers one envelope per turn)."""

    def create(self) -> TestClient:
        client = super().create()
        self._script = getattr(self, "_script", None) or client.events
        client.events = self._script
        return client


# --- tools ---------------------------------------------------------------------------------


def add(a: int, b: int) -> int:
    """Add two numbers (a sync tool: AG2 runs it on a worker thread)."""
    return a + b


async def lookup(key: str) -> str:
    """Look a key up (an async tool)."""
    await asyncio.sleep(0)
    return f"value of {key}"


def broken(reason: str) -> str:
    """Always fails."""
    raise ValueError(reason)


def route(topic: str) -> Handoff:
    """Picks the specialist at run time (a dynamic handoff)."""
    return Handoff(target="reviewer", reason=f"{topic} needs review")


def wrap_up(summary: str) -> Finish:
    """Ends the workflow channel."""
    return Finish(summary=summary, reason="answered")


async def deploy(target: str, ctx: Context) -> str:
    """Asks a human for approval first."""
    answer = await ctx.input(f"Deploy to {target}?")
    return f"deployed to {target} ({answer})"


# --- scenarios -----------------------------------------------------------------------------


async def parallel_tools() -> Expected:
    """One turn: a sync, an async, a failing and an unknown tool called in parallel."""
    ledger = Ledger()
    agent = Agent("assistant", config=config(
        ledger.response(None, call("add", a=2, b=3), call("lookup", key=SECRET),
                        call("broken", reason="out of order"), call("no_such_tool"),
                        cached=40, reasoning=5),
        ledger.response("2 + 3 = 5", prompt=300, completion=30)),
        tools=[add, lookup, broken])
    await agent.ask(f"Add 2 and 3, look up {SECRET}.")
    return Expected({"conversation": 1, "agent_call": 1, "llm_call": 2, "tool_call": 4}, ledger,
                    failed={"tool_call": 2},
                    nesting=[("assistant", "tool_call", "agent_call"),
                             ("assistant", "llm_call", "agent_call"),
                             ("assistant", "agent_call", "conversation")])


async def delegation() -> Expected:
    """A coordinator delegates to a researcher agent exposed as a tool (``as_tool``)."""
    ledger = Ledger()
    researcher = Agent("researcher", config=config(ledger.response("Three sources agree.")))
    coordinator = Agent("coordinator", config=config(
        ledger.response(None, call("task_researcher", objective=f"Check {SECRET}")),
        ledger.response("Summary: the sources agree.")),
        tools=[researcher.as_tool(description="Researches a question.")])
    await coordinator.ask("Is the claim right?")
    # The delegation is a sub-task: its objective and its result are messages.
    return Expected({"conversation": 1, "agent_call": 2, "llm_call": 3, "tool_call": 1,
                     "message": 2}, ledger,
                    nesting=[("researcher", "agent_call", "tool_call"),
                             ("coordinator", "tool_call", "agent_call"),
                             ("*", "message", "agent_call")])


async def parallel_subtasks() -> Expected:
    """``run_subtasks`` fans two sub-task agents out in parallel (``TaskConfig``)."""
    ledger = Ledger()
    subtask_reply = ledger.response("Part done.", prompt=50)
    ledger.response("Part done.", prompt=50)  # the second sub-task replays the same script
    planner = Agent("planner", tasks=TaskConfig(config=config(subtask_reply)), config=config(
        ledger.response(None, call("run_subtasks", tasks=["part one", "part two"])),
        ledger.response("Both parts done.")))
    await planner.ask("Do both parts.")
    return Expected({"conversation": 1, "agent_call": 3, "llm_call": 4, "tool_call": 1,
                     "message": 4}, ledger,
                    nesting=[("subtask-*", "agent_call", "tool_call"),
                             ("subtask-*", "llm_call", "agent_call"),
                             ("planner", "message", "agent_call")])


async def background_agent() -> Expected:
    """A coordinator starts a worker agent in the background (``background_agent_tool``): the
    worker's turn outlives the tool call that started it, and its result reaches the
    coordinator in the next ``ask``. The worker's tool holds until the first ``ask`` has
    returned, so that the result cannot reach that one (AG2 delivers a result that arrives in
    time to the running turn); when its ``TaskStarted`` lands is left to the event loop."""
    ledger = Ledger()
    first_ask_done = asyncio.Event()

    async def hold() -> str:
        """Waits for the go-ahead."""
        await first_ask_done.wait()
        return "go"

    worker = Agent("worker", tools=[hold], config=config(
        ledger.response(None, call("hold")), ledger.response("Index rebuilt.")))
    coordinator = Agent("coordinator", tools=[background_agent_tool(
        worker, description="Runs a job in the background.")], config=config(
        ledger.response(None, call("background_task_worker", objective="Rebuild the index")),
        ledger.response("Started it."), ledger.response("It is done.")))
    reply = await coordinator.ask("Rebuild the index.")
    first_ask_done.set()
    # The background task is the program's only other task: wait until it has delivered.
    await asyncio.gather(*(asyncio.all_tasks() - {asyncio.current_task()}))
    await reply.ask("Is it done?")
    # The task's objective, read at the coordinator's next LLM call, and its result, read at
    # the first LLM call of the follow-up turn it is delivered to: both under the coordinator's
    # turns.
    return Expected({"conversation": 2, "agent_call": 3, "llm_call": 5, "tool_call": 2,
                     "message": 2}, ledger,
                    nesting=[("worker", "agent_call", "tool_call"),
                             ("worker", "llm_call", "agent_call"),
                             ("worker", "tool_call", "agent_call"),
                             ("coordinator", "message", "agent_call"),
                             ("worker", "message", "agent_call")])


async def human_approval() -> Expected:
    """A tool asks the human (``ctx.input``) through the agent's HITL hook."""
    ledger = Ledger()
    agent = Agent("operator", config=config(
        ledger.response(None, call("deploy", target="staging")),
        ledger.response("Deployed.")),
        tools=[deploy], hitl_hook=lambda request: "approved")
    await agent.ask("Deploy the service.")
    return Expected({"conversation": 1, "agent_call": 1, "llm_call": 2, "tool_call": 1,
                     "human_input": 1}, ledger,
                    nesting=[("operator", "human_input", "tool_call")])


async def follow_up_unknown_model() -> Expected:
    """``reply.ask`` continues a conversation; the second model is unknown to the price table."""
    ledger = Ledger()
    agent = Agent("writer", config=config(
        ledger.response("First draft."),
        ledger.response("Second draft.", model=UNKNOWN_MODEL)))
    reply = await agent.ask("Write a draft.")
    await reply.ask("Improve it.")
    return Expected({"conversation": 2, "agent_call": 2, "llm_call": 2}, ledger)


async def concurrent_agents() -> Expected:
    """Two agents asked at once under ``asyncio.gather``; each keeps its own parents."""
    ledger = Ledger()
    agents = [Agent(name, config=config(ledger.response(None, call("add", a=1, b=i)),
                                        ledger.response(f"{name} done")), tools=[add])
              for i, name in enumerate(("left", "right"))]
    await asyncio.gather(*(agent.ask("Add.") for agent in agents))
    return Expected({"conversation": 2, "agent_call": 2, "llm_call": 4, "tool_call": 2}, ledger,
                    nesting=[(name, kind, "agent_call") for name in ("left", "right")
                             for kind in ("tool_call", "llm_call")])


async def model_failure() -> Expected:
    """The provider fails mid-turn: the program sees AG2's exception unchanged, the spans fail."""
    ledger = Ledger()
    agent = Agent("fragile", config=config(ledger.response(None, call("add", a=1, b=1)),
                                           ConnectionError("provider unreachable")), tools=[add])
    try:
        await agent.ask("Add.")
    except ConnectionError as exc:
        assert str(exc) == "provider unreachable", exc
    else:
        raise AssertionError("the provider's failure did not reach the program")
    return Expected({"conversation": 1, "agent_call": 1, "llm_call": 2, "tool_call": 1}, ledger,
                    failed={"conversation": 1, "agent_call": 1, "llm_call": 1})


async def run_workflow(lead: Any, targets: list[Any], graph: TransitionGraph, text: str) -> None:
    """Open a workflow channel from ``lead`` to ``targets`` routed by ``graph``, send ``text``
    and wait until the channel closes."""
    channel = await lead.open(type=WORKFLOW_TYPE, target=[agent.agent_id for agent in targets],
                              knobs={"graph": graph.to_dict()})
    await channel.send(text)
    await lead.wait_for_channel_event(
        channel_id=channel.channel_id, timeout=60.0,
        predicate=lambda envelope: envelope.event_type == EV_CHANNEL_CLOSED)


async def network_workflow() -> Expected:
    """An ``ag2.network`` workflow channel: a graph hands the kickoff to the triager, whose
    tool hands off to the reviewer (``Handoff``), whose tool ends the channel (``Finish``)."""
    ledger = Ledger()
    hub = await Hub.open(MemoryKnowledgeStore(), ttl_sweep_interval=0)
    try:
        lead = await hub.register(Agent("lead", config=AcrossTurns()))
        triager = await hub.register(Agent("triager", tools=[route], config=AcrossTurns(
            ledger.response(None, call("route", topic=f"key {SECRET}")),
            ledger.response("Routed to review.", prompt=150), raise_tool_errors=False)))
        reviewer = await hub.register(Agent("reviewer", tools=[wrap_up], config=AcrossTurns(
            ledger.response(None, call("wrap_up", summary="Looks right.")),
            ledger.response("Reviewed.", prompt=180), raise_tool_errors=False)))
        graph = TransitionGraph(
            initial_speaker=lead.agent_id,
            transitions=[Transition(when=FromSpeaker(lead.agent_id),
                                    then=AgentTarget(triager.agent_id))],
            default_target=TerminateTarget(reason="fall_through"), max_turns=10)
        await run_workflow(lead, [triager, reviewer], graph, "Triage the incident report.")
    finally:
        await hub.close()
    return Expected({"conversation": 1, "message": 3, "handoff": 3, "agent_call": 2,
                     "llm_call": 4, "tool_call": 2}, ledger,
                    nesting=[(name, "agent_call", "conversation")
                             for name in ("triager", "reviewer")]
                    + [("lead", "message", "conversation"), ("triager", "handoff", "conversation"),
                       ("reviewer", "tool_call", "agent_call")],
                    handoffs=[("lead", "transition", "triager"),
                              ("triager", "handoff", "reviewer"),
                              ("reviewer", "termination", None)])


async def network_graph() -> Expected:
    """A workflow channel routed by its graph alone, no routing tool: a transition from the
    lead to the triager, the default target to the reviewer, and a transition to a
    ``TerminateTarget`` after the reviewer."""
    ledger = Ledger()
    hub = await Hub.open(MemoryKnowledgeStore(), ttl_sweep_interval=0)
    try:
        lead = await hub.register(Agent("lead", config=AcrossTurns()))
        triager = await hub.register(Agent("triager", config=AcrossTurns(
            ledger.response("Needs a review."))))
        reviewer = await hub.register(Agent("reviewer", config=AcrossTurns(
            ledger.response("Reviewed.", prompt=180))))
        graph = TransitionGraph(
            initial_speaker=lead.agent_id,
            transitions=[Transition(when=FromSpeaker(lead.agent_id),
                                    then=AgentTarget(triager.agent_id)),
                         Transition(when=FromSpeaker(reviewer.agent_id),
                                    then=TerminateTarget(reason="reviewed"))],
            default_target=AgentTarget(reviewer.agent_id), max_turns=10)
        await run_workflow(lead, [triager, reviewer], graph, "Triage the incident report.")
    finally:
        await hub.close()
    return Expected({"conversation": 1, "message": 3, "handoff": 3, "agent_call": 2,
                     "llm_call": 2}, ledger,
                    nesting=[("reviewer", "handoff", "conversation"),
                             ("triager", "agent_call", "conversation")],
                    handoffs=[("lead", "transition", "triager"),
                              ("triager", "default", "reviewer"),
                              ("reviewer", "termination", None)])


class StallAfterFailure:
    """The workflow's ``turn_within`` expectation, judged by a stand-in clock: the speaker the
    channel waits for is overdue once its turn has failed. Only the fail-fast one (its
    handler, ``auto_close``, closes the channel) fires; the ``warn`` one has no handler."""

    name = "turn_within"

    def __init__(self) -> None:
        self.failed = asyncio.Event()

    def evaluate(self, expectation: Any, context: Any) -> Violation | None:
        if expectation.on_violation != "auto_close" or not self.failed.is_set():
            return None
        return Violation(expectation, violator_ids=[context.state.expected_next_speaker])


class TurnFailures(BaseHubListener):
    """The program's own listener: tells the stand-in clock a turn failed."""

    def __init__(self, stall: StallAfterFailure) -> None:
        self.stall = stall

    async def on_turn_failed(self, *args: Any) -> None:
        self.stall.failed.set()


async def network_failures() -> Expected:
    """A workflow channel where things go wrong: the triager's provider fails (the hub reports
    the failed turn), the channel then waits for it past its ``turn_within`` expectation, whose
    violation closes the channel."""
    ledger = Ledger()
    hub = await Hub.open(MemoryKnowledgeStore(), ttl_sweep_interval=0,
                         expectation_sweep_interval=0.01)
    stall = StallAfterFailure()
    hub.register_expectation_evaluator(stall)
    hub.register_listener(TurnFailures(stall))
    try:
        lead = await hub.register(Agent("lead", config=AcrossTurns()))
        triager = await hub.register(Agent("triager", config=AcrossTurns(
            ConnectionError("provider unreachable"))))
        graph = TransitionGraph(
            initial_speaker=lead.agent_id,
            transitions=[Transition(when=FromSpeaker(lead.agent_id),
                                    then=AgentTarget(triager.agent_id))],
            default_target=TerminateTarget(reason="fall_through"), max_turns=10)
        await run_workflow(lead, [triager], graph, f"Triage the incident report ({SECRET}).")
    finally:
        await hub.close()
    return Expected({"conversation": 1, "message": 3, "handoff": 1, "agent_call": 1,
                     "llm_call": 1}, ledger,
                    failed={"conversation": 1, "message": 2, "agent_call": 1, "llm_call": 1},
                    nesting=[("lead", "message", "conversation"),
                             ("triager", "message", "conversation"),
                             ("triager", "agent_call", "conversation")],
                    handoffs=[("lead", "transition", "triager")])


async def sandbox_tools() -> Expected:
    """The sandbox tools run what the model wrote in a local sandbox: code that succeeds and
    code that exits 3, an allowed shell command and one the tool's filter refuses."""
    ledger = Ledger()
    with tempfile.TemporaryDirectory() as workdir:
        sandbox = LocalEnvironment(workdir)
        agent = Agent("sandboxer", tools=[
            SandboxCodeTool(sandbox, languages=("bash",)),
            SandboxShellTool(sandbox, allowed=["echo"])], config=config(
            ledger.response(None, call("run_code", code="echo 42", language="bash"),
                            call("run_code", code="echo failing >&2; exit 3", language="bash"),
                            call("run_shell_command", command=f"echo {SECRET}"),
                            call("run_shell_command", command="rm -rf /")),
            ledger.response("Ran them.")))
        await agent.ask("Run these.")
    return Expected({"conversation": 1, "agent_call": 1, "llm_call": 2, "tool_call": 4,
                     "code_exec": 4}, ledger, failed={"code_exec": 2},
                    nesting=[("sandboxer", "code_exec", "tool_call")],
                    executions=[("code", 0), ("code", 3), ("refused", None), ("shell", 0)])


async def memory_upkeep() -> Expected:
    """An agent whose knowledge config compacts its history and aggregates a summary after the
    turn: two LLM calls of AG2's own, outside ``on_llm_call``, each with its usage."""
    ledger = Ledger()
    knowledge = KnowledgeConfig(
        store=MemoryKnowledgeStore(), expose_tool=False, write_event_log=False,
        compact=SummarizeCompact(target=1, config=TestConfig(
            ledger.response("Summary of the start.", prompt=400, completion=40))),
        compact_trigger=CompactTrigger(max_events=1),
        aggregate=ConversationSummaryAggregate(config=TestConfig(
            ledger.response("Notes for later.", prompt=250, completion=25, cached=100))),
        aggregate_trigger=AggregateTrigger(on_end=True))
    agent = Agent("archivist", config=config(ledger.response("Filed.")), knowledge=knowledge)
    await agent.ask("File this report.")
    return Expected({"conversation": 1, "agent_call": 1, "llm_call": 3}, ledger,
                    nesting=[("archivist", "llm_call", "agent_call")])


class ScriptedRealtime:
    """A realtime provider's session, scripted: once open, it emits what OpenAI's does for what
    the user said and two responses (a tool call, then an answer): the transcript of the user's
    speech, each response's ``UsageEvent`` and ``ModelResponse``, from a task of its own as the
    provider's receive loop."""

    def __init__(self, *responses: ModelResponse, heard: str = "") -> None:
        self.responses = responses
        self.heard = heard
        self.done = asyncio.Event()

    @asynccontextmanager
    async def session(self, context: Context, **_: Any) -> AsyncIterator[None]:
        task = asyncio.create_task(self._receive(context))
        try:
            yield
        finally:
            await task

    async def _receive(self, context: Context) -> None:
        await context.send(TranscriptionCompletedEvent(self.heard))
        for response in self.responses:
            for tool_call in response.tool_calls.calls if response.tool_calls else ():
                await context.send(tool_call)
            await context.send(UsageEvent(response.usage, kind="model_call",
                                          model=response.model, provider=response.provider))
            await context.send(response)
        self.done.set()


async def live_session() -> Expected:
    """A ``LiveAgent`` session on a scripted realtime provider: what the user said, a tool
    call, two responses (the first a tool call only, the second with text)."""
    ledger = Ledger()
    provider = ScriptedRealtime(
        ledger.response(None, call("add", a=4, b=5), prompt=500, completion=60),
        ledger.response("Nine.", prompt=620, completion=30, cached=300),
        heard=f"What is four plus five? My key is {SECRET}.")
    agent = LiveAgent("voice", config=provider, tools=[add])
    async with agent.run():
        await provider.done.wait()
    # Messages: the user's transcript, the second response's text.
    return Expected({"conversation": 1, "agent_call": 1, "llm_call": 2, "tool_call": 1,
                     "message": 2}, ledger,
                    nesting=[("voice", "tool_call", "agent_call"),
                             ("voice", "llm_call", "agent_call"),
                             ("voice", "message", "agent_call"),
                             ("voice", "agent_call", "conversation")])


SCENARIOS: dict[str, Callable[[], Awaitable[Expected]]] = {
    "parallel_tools": parallel_tools,
    "delegation": delegation,
    "parallel_subtasks": parallel_subtasks,
    "background_agent": background_agent,
    "human_approval": human_approval,
    "follow_up_unknown_model": follow_up_unknown_model,
    "concurrent_agents": concurrent_agents,
    "model_failure": model_failure,
    "network_workflow": network_workflow,
    "network_graph": network_graph,
    "network_failures": network_failures,
    "sandbox_tools": sandbox_tools,
    "memory_upkeep": memory_upkeep,
    "live_session": live_session,
}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in SCENARIOS:
        print(f"usage: {argv[0]} {{{','.join(SCENARIOS)}}}", file=sys.stderr)
        return 2
    expected = asyncio.run(SCENARIOS[argv[1]]())
    print(expected.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
