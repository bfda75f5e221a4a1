"""An AG2 call that fails with an exception whose ``__str__`` raises: the program gets that
exception, the spans end ``failed`` and no hook is switched off."""

from __future__ import annotations

import pytest
import scenarios

from agent_shim import ag2


class Opaque(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str")


def test_an_unprintable_failure_closes_the_spans_and_keeps_the_hooks(capture):
    tracker, sink = capture
    boom = Opaque()
    assistant = scenarios.ScriptedAgent("assistant", script=[boom])
    with tracker.run("failing"), pytest.raises(Opaque) as raised:
        scenarios.user("user").initiate_chat(assistant, message="hi")
    assert raised.value is boom
    assert ag2.disabled_hooks() == []
    failed = {r["event_type"]: r["error_message"] for r in sink.records
              if r["k"] == "event" and r.get("status") == "failed"}
    assert failed == {t: "Opaque: Opaque()" for t in ("conversation", "agent_call", "llm_call")}
