"""Capture of AG2 1.x ``LiveAgent`` sessions (realtime speech-to-speech, ``ag2.live``).

A live agent has no turns and no ``on_llm_call``: one session (``LiveAgent.run``, an async
context manager) streams the provider's events, and its tool calls go through the agent's
middleware (``on_tool_execution``). ``patch_live`` patches ``LiveAgent.__init__`` to insert the
capture middleware, as for ``Agent``, and wraps ``LiveAgent.run``: the session is an
``agent_call`` span (subtype ``live``; in a ``conversation`` of its own when it starts outside any
turn), the current scope from before the provider's session opens, so its tasks and the tool
calls they trigger hang under it. One subscription to the session's stream (the only one a
session pays for) sees what only the stream carries: each response's usage, which only a
``UsageEvent`` reports (an ``llm_call`` point with its cost row), the text of each response (its
``ModelResponse``: a ``message`` point from the agent) and each transcript of what the user said
(``TranscriptionCompletedEvent``: a ``message`` point to the agent). Audio is not recorded.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from ag2.events import ModelResponse, TranscriptionCompletedEvent, UsageEvent
from ag2.live.realtime import LiveAgent

from ..context import CURRENT, Scope
from ..tracker import Span
from .capture import TURN, CaptureFactory, Runtime, record_usage_event, reset


def patch_live(runtime: Runtime) -> list[tuple[Any, str, Any]]:
    """Patch ``LiveAgent.__init__`` and ``LiveAgent.run``; ``(owner, name, original)`` to undo."""
    original_init, original_run = LiveAgent.__init__, LiveAgent.run

    @functools.wraps(original_init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        if runtime.enabled:
            try:
                self.insert_middleware(CaptureFactory(self.name, runtime))
            except Exception as exc:
                runtime.disable("LiveAgent.__init__", exc)

    @functools.wraps(original_run)
    @asynccontextmanager
    async def run(self: Any, **kwargs: Any) -> AsyncIterator[Any]:
        session = LiveSession.open(runtime, self.name)
        try:
            async with original_run(self, **kwargs) as context:
                with session.watching(context):
                    yield context
        except BaseException as exc:
            session.close(exc)
            raise
        session.close(None)

    LiveAgent.__init__ = __init__  # type: ignore[method-assign]
    LiveAgent.run = run  # type: ignore[method-assign]
    return [(LiveAgent, "__init__", original_init), (LiveAgent, "run", original_run)]


class LiveSession:
    """The spans of one live session, current while it is open. Never raises."""

    def __init__(self, runtime: Runtime, agent: str | None, span: Span | None,
                 conversation: Span | None) -> None:
        self.runtime = runtime
        self.agent = agent
        self.span = span
        self.conversation = conversation
        self.tokens = ((CURRENT.set(span.inner), TURN.set(span)) if span is not None else None)

    @classmethod
    def open(cls, runtime: Runtime, agent: str | None) -> LiveSession:
        if not runtime.enabled:
            return cls(runtime, agent, None, None)
        try:
            tracker = runtime.tracker
            conversation = None
            if TURN.get() is None:
                conversation = tracker.start_span(
                    "conversation", subtype="live", agent_name=agent,
                    meta={"framework": "ag2"}, inputs={"initiator": agent, "message": None})
            span = tracker.start_span(
                "agent_call", subtype="live", agent_name=agent,
                meta={"framework": "ag2", "class": "LiveAgent"},
                scope=conversation.inner if conversation is not None else None)
            return cls(runtime, agent, span, conversation)
        except Exception as exc:
            runtime.disable("LiveAgent.run", exc)
            return cls(runtime, agent, None, None)

    def watching(self, context: Any) -> Any:
        """Subscribe to the session's stream for each response's usage and text, and for
        each transcript of the user's speech."""
        return context.stream.where(UsageEvent | ModelResponse | TranscriptionCompletedEvent
                                    ).sub_scope(self._record)

    async def _record(self, event: Any) -> None:
        if self.span is None or not self.runtime.enabled:
            return
        try:
            self._record_event(event, self.span.inner)
        except Exception as exc:
            self.runtime.disable("live stream", exc)

    def _record_event(self, event: Any, scope: Scope) -> None:
        agent, tracker = self.agent, self.runtime.tracker
        if isinstance(event, UsageEvent):
            if event.kind == "model_call":
                record_usage_event(self.runtime, agent, event, scope, "live")
        elif isinstance(event, ModelResponse):
            if event.content is not None:  # audio-only and tool-call-only responses have none
                tracker.event("message", subtype="live_response", agent_name=agent,
                              scope=scope, inputs={"sender": agent, "recipient": None,
                                                   "content": event.content})
        else:
            tracker.event("message", subtype="live_transcript", agent_name=agent, scope=scope,
                          inputs={"sender": None, "recipient": agent,
                                  "content": event.content})

    def close(self, exc: BaseException | None) -> None:
        if self.span is None or self.tokens is None:
            return
        current, turn = self.tokens
        reset(TURN, turn)
        reset(CURRENT, current)
        status = "failed" if exc is not None else "completed"
        error = f"{type(exc).__name__}: {exc}" if exc is not None else None
        try:
            tracker = self.runtime.tracker
            tracker.end_span(self.span, status=status, error=error)
            if self.conversation is not None:
                tracker.end_span(self.conversation, status=status, error=error)
        except Exception as err:
            self.runtime.disable("LiveAgent.run", err)
