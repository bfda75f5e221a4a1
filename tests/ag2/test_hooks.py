"""Installing, removing and failing safely; subclasses; concurrency; thread hops; autoload."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

import autogen
import pytest
import scenarios
from ag2_checks import check_capture, rows_from_records

import agent_shim
from agent_shim import ag2
from agent_shim.ag2 import activities, propagation
from agent_shim.testing import recording_tracker
from agent_shim.tracker import DisabledTracker

#: Where the agent_shim under test comes from (the source tree, or an installed copy).
SHIM_PATH = Path(agent_shim.__file__).resolve().parents[1]


def ag2_state() -> dict[tuple[str, str], Any]:
    """Every attribute the hooks could touch, by identity."""
    import autogen.agentchat.conversable_agent as ca
    import autogen.agentchat.group.multi_agent_chat as mac
    from autogen.coding import LocalCommandLineCodeExecutor

    state = {}
    roots = (autogen.ConversableAgent, autogen.GroupChat, autogen.OpenAIWrapper,
             LocalCommandLineCodeExecutor)
    for root in roots:
        pending = [root]
        while pending:
            cls = pending.pop()
            pending.extend(cls.__subclasses__())
            for name, value in vars(cls).items():
                state[(cls.__qualname__, name)] = value
    state[("conversable_agent", "threading")] = ca.threading
    state[("multi_agent_chat", "threading")] = mac.threading
    return state


def same(a: dict[Any, Any], b: dict[Any, Any]) -> bool:
    return a.keys() == b.keys() and all(a[k] is b[k] for k in a)


def run_and_check(name: str, tracker, sink) -> list[str]:
    with tracker.run(name) as run:
        expected = scenarios.SCENARIOS[name]()
    events, costs, problems = rows_from_records(sink.records)
    return problems + check_capture(events, costs, counts=expected.counts,
                                    usage=asdict(expected.usage), secret=scenarios.SECRET,
                                    failed=expected.failed, terminations=expected.terminations,
                                    run=run.id)


class TestInstall:
    def test_install_twice_changes_nothing(self):
        tracker, _ = recording_tracker()
        try:
            assert ag2.install(tracker)
            first = ag2_state()
            assert ag2.install(tracker)
            assert ag2.install(recording_tracker()[0])
            assert same(first, ag2_state())
        finally:
            ag2.uninstall()

    def test_uninstall_restores_ag2_exactly(self):
        before = ag2_state()
        tracker, _ = recording_tracker()
        assert ag2.install(tracker)
        assert not same(before, ag2_state())
        assert ag2.uninstall()
        assert same(before, ag2_state())
        assert not ag2.uninstall()

    def test_a_disabled_tracker_patches_nothing(self):
        before = ag2_state()
        assert not ag2.install(DisabledTracker())
        assert not ag2.installed()
        assert same(before, ag2_state())

    def test_a_class_defined_after_install_is_adopted(self, capture):
        tracker, sink = capture

        class Echo(autogen.ConversableAgent):
            def generate_reply(self, messages=None, sender=None, **kwargs):  # no super()
                return "TERMINATE"

        with tracker.run("late class"):
            echo = Echo("echo", llm_config=False, human_input_mode="NEVER")
            scenarios.user("user").initiate_chat(echo, message="hi", max_turns=1)
        events, _, problems = rows_from_records(sink.records)
        assert problems == []
        assert [e["agent_name"] for e in events if e["event_type"] == "agent_call"] == ["echo"]
        ag2.uninstall()
        assert "generate_reply" in vars(Echo) and not hasattr(Echo.generate_reply,
                                                                "__cmbagent_original__")


class TestFailures:
    def test_user_exceptions_propagate_unchanged_and_spans_fail(self, capture):
        tracker, sink = capture
        boom = ConnectionError("model down")
        assistant = scenarios.ScriptedAgent("assistant", script=[boom])
        with tracker.run("failing"), pytest.raises(ConnectionError) as raised:
            scenarios.user("user").initiate_chat(assistant, message="hi")
        assert raised.value is boom
        events, _, problems = rows_from_records(sink.records)
        assert problems == []
        status = {e["event_type"]: (e["status"], e["error_message"])
                  for e in events if e["event_type"] != "message"}
        expected_error = "ConnectionError: model down"
        assert status == {t: ("failed", expected_error)
                          for t in ("conversation", "agent_call", "llm_call")}

    def test_an_internal_error_disables_the_hook_once_and_the_program_goes_on(
            self, capture, monkeypatch, caplog):
        tracker, sink = capture

        def broken(self, args, kwargs):
            raise KeyError("shim bug")

        monkeypatch.setattr(activities.ToolCall, "begin", broken)
        monkeypatch.setattr(activities.Message, "end", broken)  # never called: messages are points
        monkeypatch.setattr(activities.LLMCall, "end", broken)
        with caplog.at_level(logging.WARNING, logger="agent_shim.ag2"), tracker.run("buggy"):
            expected = scenarios.two_agent_tools()
        assert expected.unconsumed == 0
        assert sorted(ag2.disabled_hooks()) == ["ConversableAgent.a_execute_function",
                                                "ConversableAgent.execute_function",
                                                "OpenAIWrapper.create"]
        assert len([r for r in caplog.records if "disabled" in r.getMessage()]) == 3
        events, costs, problems = rows_from_records(sink.records)
        assert problems == []  # the LLM span whose end failed was still closed
        assert [e["event_type"] for e in events].count("tool_call") == 0
        assert [e["event_type"] for e in events].count("llm_call") == 1  # then the hook was off
        assert costs == []


class TestContext:
    def test_concurrent_tasks_keep_their_own_parents(self, capture):
        tracker, sink = capture

        async def chat(i: int) -> None:
            with tracker.span("task", subtype=str(i)):
                assistant = scenarios.ScriptedAgent(f"assistant{i}", script=[f"answer {i}"])
                await scenarios.user(f"user{i}").a_initiate_chat(assistant, message="q",
                                                                  max_turns=1)

        async def main() -> None:
            await asyncio.gather(*(chat(i) for i in range(4)))

        with tracker.run("concurrent"):
            asyncio.run(main())
        events, _, problems = rows_from_records(sink.records)
        assert problems == []
        by_id = {e["id"]: e for e in events}

        def task_of(event):
            while event["event_type"] != "task":
                event = by_id[event["parent_event_id"]]
            return event["event_subtype"]

        for e in events:
            if e["event_type"] != "task":
                assert e["agent_name"].endswith(task_of(e)), (e["event_type"], e["agent_name"])
        llm = [e for e in events if e["event_type"] == "llm_call"]
        assert len(llm) == 4
        assert all(by_id[e["parent_event_id"]]["event_type"] == "agent_call" for e in llm)

    def test_a_lost_thread_hop_is_detected(self, capture, monkeypatch):
        """Negative control: without the context-copying Thread, run() escapes the run."""
        tracker, sink = capture
        import autogen.agentchat.conversable_agent as ca

        assert isinstance(ca.threading, propagation.ThreadingProxy)
        monkeypatch.setattr(ca, "threading", threading)
        problems = run_and_check("background_run", tracker, sink)
        assert any("lost thread hop" in p for p in problems), problems


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CMBAGENT_")}
    environ.update(PYTHONPATH=str(SHIM_PATH), **env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=environ,
                          capture_output=True, text=True, timeout=120)


class TestAutoload:
    def test_autoload_installs_when_autogen_is_first_imported(self, tmp_path):
        result = _python("""
            import sys
            import agent_shim._autoload
            assert "autogen" not in sys.modules, "autoload must not import AG2"
            import autogen
            from agent_shim import ag2
            print(ag2.installed(), hasattr(autogen.ConversableAgent.send, "__cmbagent_original__"))
            """, CMBAGENT_COLLECTOR_URL="tcp://127.0.0.1:9", CMBAGENT_SPOOL_DIR=str(tmp_path),
            CMBAGENT_EXIT_TIMEOUT="0.1")
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["True", "True"]

    def test_nothing_is_patched_without_the_variable(self):
        result = _python("""
            import autogen
            from agent_shim import ag2
            print(ag2.install(), ag2.installed(),
                  hasattr(autogen.ConversableAgent.send, "__cmbagent_original__"))
            """)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["False", "False", "False"]
