"""Real AG2 conversations, offline, driven by a scripted model client.

Each scenario builds agents, runs them through AG2's own code paths and returns an
:class:`Expected`: how many events of each type the script implies, and the usage the scripted
client reported. Nothing here imports ``agent_shim``: run as a script
(``python tests/ag2/scenarios.py <name>``) it is an unmodified AG2 program, captured only if the
package is installed and CMBAGENT_COLLECTOR_URL is set; it prints the expectation as JSON.

Works with ag2 0.9.x to 0.14.x and CMBAgent's fork ``cmbagent_autogen`` (``mod_client_cls``).
"""

import asyncio
import contextlib
import json
import os
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from autogen import ConversableAgent, GroupChat, GroupChatManager, UserProxyAgent
from autogen.agentchat import (
    a_run_group_chat,
    initiate_group_chat,
    register_function,
    run_group_chat,
)
from autogen.agentchat.group import (
    AgentTarget,
    ContextExpression,
    ContextVariables,
    ExpressionContextCondition,
    OnCondition,
    OnContextCondition,
    ReplyResult,
    StringLLMCondition,
    TerminateTarget,
)
from autogen.agentchat.group.patterns import AutoPattern, DefaultPattern
from autogen.coding import LocalCommandLineCodeExecutor

#: Planted in llm_config (api_key), in messages and in tool arguments; must never be recorded.
SECRET = "sk-test-PLANTED-SECRET-0123456789"

EVENT_TYPES = ("agent_call", "message", "tool_call", "code_exec", "handoff", "llm_call",
               "conversation", "human_input")


# --- the scripted model client (shared with the example) ----------------------------------

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "examples"))
import offline_llm  # noqa: E402
from offline_llm import CLIENT_KEY, SELECTOR, ScriptedClient, Usage, call  # noqa: E402


def llm_config() -> dict[str, Any]:
    return offline_llm.llm_config(api_key=SECRET)


class ScriptedAgent(offline_llm.ScriptedAgent):
    api_key = SECRET


class CountingAssistant(ScriptedAgent):
    """Overrides the agent-call methods and calls ``super()``: must still be one agent call."""

    def generate_reply(self, *args: Any, **kwargs: Any) -> Any:
        return super().generate_reply(*args, **kwargs)

    async def a_generate_reply(self, *args: Any, **kwargs: Any) -> Any:
        return await super().a_generate_reply(*args, **kwargs)


class ScriptedHuman(UserProxyAgent):
    """A user proxy whose human answers from a script (overrides ``get_human_input``)."""

    def __init__(self, name: str, answers: list[str], **kwargs: Any) -> None:
        self.answers = deque(answers)
        super().__init__(name, **kwargs)

    def get_human_input(self, prompt: str, **kwargs: Any) -> str:
        return self.answers.popleft()


def user(name: str = "user", **kwargs: Any) -> ConversableAgent:
    kwargs.setdefault("human_input_mode", "NEVER")
    kwargs.setdefault("is_termination_msg", terminates)
    kwargs.setdefault("code_execution_config", False)
    return ConversableAgent(name, llm_config=False, **kwargs)


def terminates(message: dict[str, Any]) -> bool:
    return "TERMINATE" in str(message.get("content") or "")


@dataclass
class Expected:
    """What a scenario's script implies."""

    counts: dict[str, int]
    usage: Usage
    #: Events (by type) that must have failed: tools that raised, code that exited non-zero.
    failed: dict[str, int] = field(default_factory=dict)
    #: Speaker selections that ended the chat (a TerminateTarget).
    terminations: int = 0
    #: How each speaker selection was decided, in order (``meta.decided_by``).
    handoffs: list[str] = field(default_factory=list)
    #: The agent that asked for each tool call, in order.
    tool_askers: list[str] = field(default_factory=list)
    unconsumed: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def expect(usage: Usage, agents: list[Any], handoffs: list[str] = (), tool_askers: list[str] = (),
           terminations: int = 0, **counts: int) -> Expected:
    failed = {k[:-7]: counts.pop(k) for k in list(counts) if k.endswith("_failed")}
    full = {t: counts.get(t, 0) for t in EVENT_TYPES}
    left = len(SELECTOR) + sum(len(getattr(a, "script", ())) for a in agents)
    return Expected(full, usage, failed, terminations, list(handoffs), list(tool_askers), left)


@contextlib.contextmanager
def ledger() -> Iterator[Usage]:
    """Counts the usage the scripted client reports inside the block."""
    offline_llm.USAGE.reset()
    SELECTOR.clear()
    yield offline_llm.USAGE


@contextlib.contextmanager
def workdir() -> Iterator[str]:
    """A temporary working directory (the fork writes ``chats/*.json`` into the cwd)."""
    with tempfile.TemporaryDirectory(prefix="ag2-scenario-") as tmp:
        os.makedirs(os.path.join(tmp, "chats"), exist_ok=True)
        previous = os.getcwd()
        os.chdir(tmp)
        try:
            yield tmp
        finally:
            os.chdir(previous)


# --- tools ---------------------------------------------------------------------------------


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


async def lookup(key: str) -> str:
    """Look a key up (asynchronously)."""
    await asyncio.sleep(0)
    return f"value-of-{key}"


def broken(reason: str) -> str:
    """A tool that always fails."""
    raise RuntimeError(f"broken tool: {reason}")


def mul(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


async def fetch(url: str) -> str:
    """Fetch a page (asynchronously)."""
    await asyncio.sleep(0.01)
    return f"<html>{url}</html>"


# --- scenarios -----------------------------------------------------------------------------


def two_agent_tools() -> Expected:
    """S1: sync chat; a sync, an async and a failing tool; human input; LLM summary."""
    with ledger() as usage:
        assistant = CountingAssistant("assistant", script=[
            [call("add", a=2, b=3), call("lookup", key=SECRET)],
            [call("broken", reason="on purpose")],
            "The sum is 5. TERMINATE",
            "Summary: 5.",
        ])
        human = ScriptedHuman("human", answers=[""], human_input_mode="TERMINATE",
                              code_execution_config=False, is_termination_msg=terminates)
        for tool in (add, lookup, broken):
            register_function(tool, caller=assistant, executor=human, description=tool.__doc__)
        human.initiate_chat(assistant, message=f"Add 2 and 3, look up {SECRET}.",
                            summary_method="reflection_with_llm")
    # human→assistant ×3 + assistant→human ×3 (tools, tools, text); the human's 4th reply is
    # None after its human input (""), which ends the chat.
    return expect(usage, [assistant], conversation=1, message=6, agent_call=6, llm_call=4,
                  tool_call=3, tool_call_failed=1, human_input=1, tool_askers=["assistant"] * 3)


def async_parallel_tools() -> Expected:
    """S2: async chat, two tool calls (async + sync) executed concurrently."""
    with ledger() as usage:
        assistant = CountingAssistant("assistant", script=[
            [call("fetch", url=f"https://example.org/?key={SECRET}"), call("mul", a=6, b=7)],
            "42, and the page. TERMINATE",
        ])
        caller = user("user")
        for tool in (fetch, mul):
            register_function(tool, caller=assistant, executor=caller, description=tool.__doc__)
        asyncio.run(caller.a_initiate_chat(assistant, message="Fetch and multiply.", max_turns=2))
    # turn 1: user→assistant, assistant (LLM: tools)→user; turn 2: user (tools)→assistant,
    # assistant (LLM)→user.
    return expect(usage, [assistant], conversation=1, message=4, agent_call=3, llm_call=2,
                  tool_call=2, tool_askers=["assistant"] * 2)


def _coder(script: list[str]) -> ScriptedAgent:
    return ScriptedAgent("coder", script=script, code_execution_config=False)


def code_executor() -> Expected:
    """S3: code through LocalCommandLineCodeExecutor: one block exits 0, one exits 3."""
    with ledger() as usage, workdir() as tmp:
        coder = _coder(["```python\nprint('hello from the executor')\n```",
                        "```python\nimport sys\nsys.exit(3)\n```",
                        "TERMINATE"])
        executor = user("executor", code_execution_config={
            "executor": LocalCommandLineCodeExecutor(work_dir=tmp, timeout=60)})
        executor.initiate_chat(coder, message="Write code.")
    return expect(usage, [coder], conversation=1, message=6, agent_call=6, llm_call=3,
                  code_exec=2, code_exec_failed=1)


def legacy_code() -> Expected:
    """S4: the legacy path (``code_execution_config`` with a work_dir): exit 0, then exit 3.

    (Python blocks: the fork's ``extract_code`` does not recognise ``sh`` fences.)"""
    with ledger() as usage, workdir() as tmp:
        coder = _coder(["```python\nprint('hello from the legacy path')\n```",
                        "```python\nraise SystemExit(3)\n```",
                        "TERMINATE"])
        executor = user("executor", code_execution_config={"work_dir": tmp, "use_docker": False})
        executor.initiate_chat(coder, message="Write code.")
    return expect(usage, [coder], conversation=1, message=6, agent_call=6, llm_call=3,
                  code_exec=2, code_exec_failed=1)


def _selector_config() -> dict[str, Any]:
    return {"select_speaker_auto_llm_config": llm_config(),
            f"select_speaker_auto_{CLIENT_KEY}": ScriptedClient}


def classic_groupchat() -> Expected:
    """S5: GroupChat with LLM ("auto") speaker selection; the executor runs code."""
    with ledger() as usage, workdir() as tmp:
        planner = ScriptedAgent("planner", script=["Plan: coder writes, executor runs."],
                                description="Plans the work.")
        coder = ScriptedAgent("coder", script=["```python\nprint(6 * 7)\n```"],
                              description="Writes code.")
        executor = user("executor", description="Runs code.", code_execution_config={
            "executor": LocalCommandLineCodeExecutor(work_dir=tmp, timeout=60)})
        closer = ScriptedAgent("closer", script=["It printed 42. TERMINATE"],
                               description="Closes the task.")
        SELECTOR.extend(["planner", "coder", "executor", "closer"])
        groupchat = GroupChat(agents=[planner, coder, executor, closer], messages=[],
                              max_round=10, speaker_selection_method="auto",
                              **_selector_config())
        manager = GroupChatManager(groupchat, llm_config=llm_config(),
                                   is_termination_msg=terminates)
        starter = user("user")
        starter.initiate_chat(manager, message=f"Compute 6*7 (token {SECRET}).")
    # 4 selections, each an internal chat: checking_agent→speaker_selection_agent (LLM) →
    # checking_agent (validates) = 1 conversation, 2 agent calls, 2 messages, 1 LLM call.
    # Group: user→manager + 4 speakers→manager = 5 messages; manager + 4 speakers = 5 agent calls.
    return expect(usage, [planner, coder, closer], conversation=1 + 4, message=5 + 4 * 2,
                  agent_call=5 + 4 * 2, llm_call=3 + 4, code_exec=1, handoff=4,
                  handoffs=["auto"] * 4)


def _handoff_team() -> tuple[DefaultPattern, list[ScriptedAgent]]:
    """triage -OnCondition-> researcher -ReplyResult-> writer -OnContextCondition-> reviewer
    -ReplyResult-> writer -after_work TerminateTarget."""

    def submit_research(findings: str, context_variables: ContextVariables) -> ReplyResult:
        """Hand the findings to the writer."""
        context_variables["draft_ready"] = True
        return ReplyResult(message=f"Findings: {findings}", target=AgentTarget(writer),
                           context_variables=context_variables)

    def approve(note: str, context_variables: ContextVariables) -> ReplyResult:
        """Approve the draft and send it back to the writer for the final version."""
        context_variables["draft_ready"] = False
        return ReplyResult(message=f"Approved: {note}", target=AgentTarget(writer),
                           context_variables=context_variables)

    triage = ScriptedAgent("triage", script=[[call("transfer_to_researcher*")]])
    researcher = ScriptedAgent("researcher", functions=[submit_research],
                               script=[[call("submit_research", findings=f"uses {SECRET}")]])
    writer = ScriptedAgent("writer", script=["Final article."])
    reviewer = ScriptedAgent("reviewer", functions=[approve],
                             script=[[call("approve", note="good")]])
    triage.handoffs.add_llm_conditions([OnCondition(
        target=AgentTarget(researcher), condition=StringLLMCondition(prompt="Needs research."))])
    writer.handoffs.add_context_condition(OnContextCondition(
        target=AgentTarget(reviewer),
        condition=ExpressionContextCondition(ContextExpression("${draft_ready} == True"))))
    writer.handoffs.set_after_work(TerminateTarget())
    team = [triage, researcher, writer, reviewer]
    pattern = DefaultPattern(initial_agent=triage, agents=team,
                             context_variables=ContextVariables(data={"draft_ready": False}),
                             group_after_work=TerminateTarget())
    return pattern, team


def _handoff_expected(usage: Usage, team: list[ScriptedAgent]) -> Expected:
    # Selections: initial→triage, tool_call→executor, on_condition→researcher, tool_call→
    # executor, reply_result→writer, on_context_condition→reviewer, tool_call→executor,
    # reply_result→writer, after_work→termination: 9. Speakers: 8 turns (4 with an LLM call,
    # writer's first turn is its context condition, 3 tool executor turns) + the manager.
    # Messages: the starting message to the manager + 8 speaker turns.
    return expect(usage, team, conversation=1, message=9, agent_call=9, llm_call=4,
                  tool_call=3, handoff=9, terminations=1,
                  handoffs=["initial", "tool_call", "on_condition", "tool_call", "reply_result",
                            "on_context_condition", "tool_call", "reply_result", "after_work"],
                  tool_askers=["triage", "researcher", "reviewer"])


def handoffs() -> Expected:
    """S6: initiate_group_chat(DefaultPattern) with every kind of handoff."""
    with ledger() as usage, workdir():
        pattern, team = _handoff_team()
        initiate_group_chat(pattern=pattern, messages=f"Write an article ({SECRET}).",
                            max_rounds=20)
    return _handoff_expected(usage, team)


def _drain(response: Any) -> None:
    for event in response.events:
        if getattr(event, "type", None) == "error":
            raise RuntimeError(f"AG2 reported an error: {event}")


def background_run() -> Expected:
    """S7: ``agent.run()`` (a background thread); events drained."""
    with ledger() as usage:
        assistant = ScriptedAgent("assistant", script=["Hello.", "Bye. TERMINATE"])
        caller = user("user")
        _drain(caller.run(assistant, message=f"Hi ({SECRET}).", max_turns=2))
    # turn 1: user→assistant (LLM) →user; turn 2: user's default reply →assistant (LLM) →user.
    return expect(usage, [assistant], conversation=1, message=4, agent_call=3, llm_call=2)


class OfflineAutoPattern(AutoPattern):
    """AutoPattern builds its GroupChat itself; give its LLM speaker selection the script."""

    def prepare_group_chat(self, *args: Any, **kwargs: Any) -> Any:
        components = super().prepare_group_chat(*args, **kwargs)
        groupchat, manager = components[7], components[8]
        copies = [groupchat, manager.groupchat] + [
            entry["config"] for entry in manager._reply_func_list
            if isinstance(entry.get("config"), GroupChat)]
        for chat in copies:
            for key, value in _selector_config().items():
                setattr(chat, key, value)
        return components


def _auto_team(tmp: str) -> tuple[OfflineAutoPattern, list[ScriptedAgent]]:
    researcher = ScriptedAgent("researcher", description="Finds facts.",
                               script=[f"Fact: 42 ({SECRET})."])
    writer = ScriptedAgent("writer", description="Writes the answer.",
                           script=["The answer is 42. TERMINATE"])
    pattern = OfflineAutoPattern(
        initial_agent=researcher, agents=[researcher, writer],
        group_manager_args={"llm_config": llm_config(), "is_termination_msg": terminates})
    return pattern, [researcher, writer]


def background_group_chat() -> Expected:
    """S8: ``run_group_chat(AutoPattern)`` in a background thread, LLM speaker selection."""
    with ledger() as usage, workdir() as tmp:
        pattern, team = _auto_team(tmp)
        SELECTOR.extend(["writer"])
        _drain(run_group_chat(pattern=pattern, messages="What is 6*7?", max_rounds=10))
    # initial→researcher, then group after_work → "auto" (1 internal selection chat) → writer,
    # whose TERMINATE ends the chat. 2 selections; internal chat: 1 conversation, 2 agent
    # calls, 2 messages, 1 LLM call.
    return expect(usage, team, conversation=1 + 1, message=3 + 2, agent_call=3 + 2,
                  llm_call=2 + 1, handoff=2, handoffs=["initial", "group_after_work"])


def async_background_group_chat() -> Expected:
    """S9: ``await a_run_group_chat(DefaultPattern)`` with the S6 handoffs."""

    async def main() -> None:
        response = await a_run_group_chat(pattern=pattern, messages=f"Write ({SECRET}).",
                                          max_rounds=20)
        async for event in response.events:
            if getattr(event, "type", None) == "error":
                raise RuntimeError(f"AG2 reported an error: {event}")

    with ledger() as usage, workdir():
        pattern, team = _handoff_team()
        asyncio.run(main())
    return _handoff_expected(usage, team)


def cmbagent_shape() -> Expected:
    """S10: AutoPattern; engineer -after_work-> engineer_nest, whose nested chat runs a
    round-robin group [formatter, executor(LocalCommandLineCodeExecutor)]; -> control."""
    with ledger() as usage, workdir() as tmp:
        engineer = ScriptedAgent("engineer", description="Writes code.",
                                 script=["```python\nprint('cmb')\n```"])
        engineer_nest = ScriptedAgent("engineer_nest", description="Runs the engineer's code.",
                                      script=[])
        control = ScriptedAgent("control", description="Decides when done.",
                                script=["Done. TERMINATE"])
        formatter = ScriptedAgent("formatter", description="Formats code.",
                                  script=["```python\nprint('cmb')\n```"])
        executor = user("executor", description="Executes code.", code_execution_config={
            "executor": LocalCommandLineCodeExecutor(work_dir=tmp, timeout=60)})
        inner = GroupChat(agents=[formatter, executor], messages=[], max_round=3,
                          speaker_selection_method="round_robin")
        inner_manager = GroupChatManager(inner, llm_config=False)
        engineer_nest.register_nested_chats(
            trigger=lambda sender: sender not in [inner_manager],
            chat_queue=[{"recipient": inner_manager, "max_turns": 1, "summary_method": "last_msg",
                         "message": lambda recipient, messages, sender, config:
                             messages[-1].get("content", "")}])
        engineer.handoffs.set_after_work(AgentTarget(engineer_nest))
        engineer_nest.handoffs.set_after_work(AgentTarget(control))
        team = [engineer, engineer_nest, control, formatter]
        pattern = OfflineAutoPattern(
            initial_agent=engineer, agents=[engineer, engineer_nest, control],
            group_manager_args={"llm_config": llm_config(), "is_termination_msg": terminates})
        initiate_group_chat(pattern=pattern, messages="Print cmb.", max_rounds=10)
    # Outer: initial→engineer, after_work→engineer_nest, after_work→control (TERMINATE): 3
    # selections, 4 messages (start + 3 turns), 4 agent calls (manager + 3).
    # Nested: engineer_nest→inner_manager conversation (max_round 3 counts the start);
    # round-robin: 2 selections (formatter, executor), messages start + formatter + executor
    # = 3, agent calls inner_manager + formatter + executor = 3. The inner manager's reply is
    # None (a group chat answers through its summary), so nothing is sent back.
    return expect(usage, team, conversation=1 + 1, message=4 + 3, agent_call=4 + 3,
                  llm_call=2 + 1, code_exec=1, handoff=3 + 2,
                  handoffs=["initial", "after_work", "round_robin", "round_robin", "after_work"])


SCENARIOS: dict[str, Callable[[], Expected]] = {
    "two_agent_tools": two_agent_tools,
    "async_parallel_tools": async_parallel_tools,
    "code_executor": code_executor,
    "legacy_code": legacy_code,
    "classic_groupchat": classic_groupchat,
    "handoffs": handoffs,
    "background_run": background_run,
    "background_group_chat": background_group_chat,
    "async_background_group_chat": async_background_group_chat,
    "cmbagent_shape": cmbagent_shape,
}


def main(argv: list[str]) -> int:
    names = argv[1:] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(SCENARIOS)}",
              file=sys.stderr)
        return 2
    for name in names:
        print(json.dumps({"scenario": name, **asdict(SCENARIOS[name]())}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
