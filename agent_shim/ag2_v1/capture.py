"""The capture middleware: AG2 1.x's own extension point, outermost in every agent.

AG2 instantiates an agent's middleware once per turn and chains its hooks around the turn, each
LLM call, each tool execution and each human-input request. :class:`CaptureMiddleware` opens a
span around each of them; the span is the current scope (a ``ContextVar``) while the hook's
``call_next`` runs, so the tool calls AG2 runs as parallel tasks, sync tools on worker threads
and nested agents (``as_tool``, sub-tasks) all find their parent. A turn that starts outside any
turn opens the ``conversation`` it belongs to, unless an ``ag2.network`` envelope started it:
then it belongs to that channel's conversation (``network.py``).

Our code runs inside ``try``; ``call_next`` runs outside it, so the program's exceptions pass
unchanged. A failure of our own disables capture for this installation, logged once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any

from ag2.events import ModelResponse, ToolErrorEvent, ToolResultEvent, UsageEvent
from ag2.middleware import BaseMiddleware

from ..context import CURRENT, Scope
from ..tracker import Span, Tracker
from .history import HistoryReader, record_unseen
from .pricing import PriceTable, Tokens

log = logging.getLogger(__name__)

#: Where the network client puts a turn's channel (``ag2.network.policies.CHANNEL_DEP``).
CHANNEL_DEPENDENCY = "ag2.network.channel"

#: The innermost open turn; a turn opened with none is the start of a conversation.
TURN: ContextVar[Span | None] = ContextVar("cmbagent_ag2_v1_turn", default=None)


@dataclass
class Runtime:
    """What every capture middleware of one installation shares."""

    tracker: Tracker
    prices: PriceTable = field(default_factory=PriceTable)
    history: HistoryReader = field(default_factory=HistoryReader)
    disabled: list[str] = field(default_factory=list)
    #: The open span of each ``ag2.network`` channel, by channel id (``network.py``).
    channels: dict[str, Span] = field(default_factory=dict)
    #: Whether to record: cleared by a failure of our own, and by ``uninstall()`` (agents
    #: built before it stop recording too). An attribute, read at every hook call.
    enabled: bool = True

    def disable(self, where: str, exc: BaseException) -> None:
        """Stop capturing after a failure of our own; logged once."""
        if not self.disabled:
            log.warning("cmbagent-tracking: AG2 1.x capture disabled after an internal error in "
                        "%s", where, exc_info=exc)
        self.disabled.append(where)
        self.enabled = False


class CaptureFactory:
    """The middleware factory inserted into one agent (AG2 calls it at the start of each turn)."""

    def __init__(self, agent_name: str | None, runtime: Runtime,
                 maintains_memory: bool = False) -> None:
        self.agent_name = agent_name
        self.runtime = runtime
        self.maintains_memory = maintains_memory

    def __call__(self, event: Any, context: Any) -> CaptureMiddleware:
        return CaptureMiddleware(event, context, self.agent_name, self.runtime,
                                 self.maintains_memory)


class CaptureMiddleware(BaseMiddleware):  # type: ignore[misc]
    """Records one turn of one agent, with its LLM calls, tool calls and human input."""

    def __init__(self, event: Any, context: Any, agent_name: str | None,
                 runtime: Runtime, maintains_memory: bool = False) -> None:
        super().__init__(event, context)
        self.agent_name = agent_name
        self.runtime = runtime
        self.maintains_memory = maintains_memory
        #: The conversation this turn opened, if it opened one (a middleware lives one turn).
        self.conversation: Span | None = None

    async def on_turn(self, call_next: Callable[..., Awaitable[Any]], event: Any,
                      context: Any) -> Any:
        if self.maintains_memory:
            call_next = self._watching_usage(call_next)
        return await self._traced(_TURN, call_next, event, context)

    def _watching_usage(self, call_next: Callable[..., Awaitable[Any]]
                        ) -> Callable[..., Awaitable[Any]]:
        """``call_next`` with the turn's stream watched for the usage of AG2's own LLM calls
        (compaction, aggregation): sent as ``UsageEvent``\\ s, never through ``on_llm_call``.
        Only agents that compact or aggregate pay for the subscription."""

        async def watched(event: Any, context: Any) -> Any:
            with context.stream.where(UsageEvent).sub_scope(self._record_usage):
                return await call_next(event, context)

        return watched

    async def _record_usage(self, event: UsageEvent) -> None:
        if event.kind not in MAINTENANCE_KINDS or not self.runtime.enabled:
            return
        turn = TURN.get()
        try:
            record_usage_event(self.runtime, self.agent_name, event,
                               turn.inner if turn is not None else None)
        except Exception as exc:
            self.runtime.disable("usage", exc)

    async def on_llm_call(self, call_next: Callable[..., Awaitable[Any]],
                          events: Sequence[Any], context: Any) -> Any:
        return await self._traced(_LLM, call_next, events, context)

    async def on_tool_execution(self, call_next: Callable[..., Awaitable[Any]], event: Any,
                                context: Any) -> Any:
        return await self._traced(_TOOL, call_next, event, context)

    async def on_human_input(self, call_next: Callable[..., Awaitable[Any]], event: Any,
                             context: Any) -> Any:
        return await self._traced(_HUMAN, call_next, event, context)

    async def _traced(self, activity: Activity, call_next: Callable[..., Awaitable[Any]],
                      subject: Any, context: Any) -> Any:
        """``call_next`` inside a span: the current scope while it runs (and the current turn,
        for a turn); its result or exception ends the span."""
        span = self._open(activity, subject, context)
        if span is None:
            return await call_next(subject, context)
        current = CURRENT.set(span.inner)
        turn = TURN.set(span) if activity is _TURN else None
        try:
            result = await call_next(subject, context)
        except BaseException as exc:
            reset(TURN, turn)
            reset(CURRENT, current)
            self._close(activity, span, None, exc)
            raise
        reset(TURN, turn)
        reset(CURRENT, current)
        self._close(activity, span, result, None)
        return result

    def _open(self, activity: Activity, subject: Any, context: Any) -> Span | None:
        """Start recording one hook call; ``None`` when capture is off. Never raises."""
        runtime = self.runtime
        if not runtime.enabled:
            return None
        try:
            inputs, meta = activity.begin(subject, self, context)
            scope = None
            if activity is _TURN and TURN.get() is None:
                scope = self._outermost_scope(context, inputs)
            return runtime.tracker.start_span(activity.event_type, agent_name=self.agent_name,
                                              inputs=inputs, meta=meta, scope=scope)
        except Exception as exc:
            runtime.disable(activity.event_type, exc)
            return None

    def _outermost_scope(self, context: Any, inputs: dict[str, Any]) -> Scope:
        """Where a turn that starts outside any turn goes: the ``ag2.network`` channel whose
        envelope started it, else a conversation it opens."""
        channel = _channel_span(self.runtime, context)
        if channel is not None:
            return channel.inner
        agent = self.agent_name
        self.conversation = self.runtime.tracker.start_span(
            "conversation", agent_name=agent, meta={"framework": "ag2"},
            inputs={"initiator": agent, "message": inputs["message"]})
        return self.conversation.inner

    def _close(self, activity: Activity, span: Span, result: Any,
               exc: BaseException | None) -> None:
        """End the span (and the conversation the turn opened) with the result or exception.
        Never raises."""
        runtime = self.runtime
        try:
            end = (End(status="failed", error=f"{type(exc).__name__}: {exc}") if exc is not None
                   else activity.end(result, self))
        except Exception as err:
            runtime.disable(activity.event_type, err)
            end = End()  # never leave it open
        tracker = runtime.tracker
        try:
            tracker.end_span(span, status=end.status, outputs=end.outputs, meta=end.meta,
                             error=end.error, subtype=end.subtype)
            if end.cost is not None:
                record_cost(tracker, self.agent_name, end.cost, span.id, span.scope)
            conversation = self.conversation
            if conversation is not None and activity is _TURN:
                summary = end.outputs.get("reply") if isinstance(end.outputs, dict) else None
                tracker.end_span(conversation, status=end.status, error=end.error,
                                 outputs={"summary": summary})
        except Exception as err:
            runtime.disable(activity.event_type, err)


# --- what each hook records ----------------------------------------------------------------


@dataclass(slots=True)
class End:
    status: str = "completed"
    outputs: Any = None
    meta: dict[str, Any] | None = None
    error: str | None = None
    subtype: str | None = None
    #: An LLM call's cost row (what :func:`usage_meta` gave).
    cost: CostRow | None = None


class Activity:
    """One kind of hook: the event type and what it records at entry (inputs, meta) and exit."""

    event_type = ""

    def begin(self, subject: Any, capture: CaptureMiddleware,
              context: Any) -> tuple[Any, dict[str, Any] | None]:
        raise NotImplementedError

    def end(self, result: Any, capture: CaptureMiddleware) -> End:
        raise NotImplementedError


class Turn(Activity):
    event_type = "agent_call"

    def begin(self, subject: Any, capture: CaptureMiddleware,
              context: Any) -> tuple[Any, dict[str, Any] | None]:
        return ({"message": event_text(subject), "event": type(subject).__name__},
                {"framework": "ag2", "class": "Agent"})

    def end(self, result: Any, capture: CaptureMiddleware) -> End:
        return End(outputs={"reply": response_text(result)})


class LLMCall(Activity):
    event_type = "llm_call"

    def begin(self, subject: Any, capture: CaptureMiddleware,
              context: Any) -> tuple[Any, dict[str, Any] | None]:
        # AG2 hands the whole history (a list): read where the previous call stopped, no copy.
        if not isinstance(subject, Sequence):
            subject = list(subject or ())
        runtime = capture.runtime
        record_unseen(runtime.tracker, runtime.history, capture.agent_name, context.stream.id,
                      subject)
        return ({"messages": len(subject),
                 "last_message": event_text(subject[-1]) if subject else None}, None)

    def end(self, result: Any, capture: CaptureMiddleware) -> End:
        meta, cost = usage_meta(capture.runtime, result)
        batch = fields(result).get("tool_calls")
        calls = fields(batch).get("calls") if batch is not None else None
        outputs = {"content": response_text(result),
                   "tool_calls": [_requested(fields(call)) for call in calls] if calls else None}
        return End(outputs=outputs, meta=meta, cost=cost)


#: What an LLM call's cost row says: model, tokens, cost in USD.
CostRow = tuple[str | None, Tokens, float | None]


def usage_meta(runtime: Runtime, reported: Any) -> tuple[dict[str, Any], CostRow]:
    """An LLM call's meta (model, tokens, finish reason, cost, pricing) and its cost row, from
    what reports its usage (a ``ModelResponse`` or a ``UsageEvent``)."""
    reported_fields = fields(reported)
    provider, model = reported_fields.get("provider"), reported_fields.get("model")
    tokens = Tokens.of(reported_fields.get("usage"))
    cost, pricing = runtime.prices.price(provider, model, tokens)
    return {"model": model, "provider": provider, "prompt_tokens": tokens.prompt,
            "completion_tokens": tokens.completion, "total_tokens": tokens.total,
            "cached_tokens": tokens.cached, "cache_write_tokens": tokens.cache_write,
            "reasoning_tokens": tokens.reasoning,
            "finish_reason": reported_fields.get("finish_reason"),
            "cost": cost, "pricing": pricing}, (model, tokens, cost)


def record_cost(tracker: Tracker, agent: str | None, row: CostRow, event_id: bytes,
                scope: Scope | None) -> None:
    """The cost row of the LLM call ``event_id``."""
    model, tokens, cost = row
    tracker.cost(model=model, agent_name=agent, prompt_tokens=tokens.prompt,
                 completion_tokens=tokens.completion, total_tokens=tokens.total,
                 cost_usd=cost, event_id=event_id, scope=scope)


#: ``UsageEvent.kind`` of AG2's own LLM calls made outside ``on_llm_call``. (``model_call``
#: repeats an ``on_llm_call``'s usage; ``subtask`` sums a sub-task's, recorded in its turns.)
MAINTENANCE_KINDS = frozenset({"compaction", "aggregation"})


def record_usage_event(runtime: Runtime, agent: str | None, event: UsageEvent,
                       scope: Scope | None, subtype: str | None = None) -> None:
    """An LLM call that only a ``UsageEvent`` reports (AG2's upkeep, a live session's
    responses): a point ``llm_call`` (subtype: the event's kind unless given), with its cost
    row."""
    meta, cost = usage_meta(runtime, event)
    tracker = runtime.tracker
    event_id = tracker.event("llm_call", subtype=subtype or event.kind, agent_name=agent,
                             inputs={"purpose": event.kind}, meta=meta, scope=scope)
    record_cost(tracker, agent, cost, event_id, scope)


class ToolCall(Activity):
    event_type = "tool_call"

    def begin(self, subject: Any, capture: CaptureMiddleware,
              context: Any) -> tuple[Any, dict[str, Any] | None]:
        return tool_inputs(subject), None

    def end(self, result: Any, capture: CaptureMiddleware) -> End:
        if isinstance(result, ToolErrorEvent):
            error = getattr(result, "error", None)
            return End(status="failed", outputs={"success": False},
                       error=f"{type(error).__name__}: {error}")
        if isinstance(result, ToolResultEvent):
            return End(outputs={"success": True, "content": tool_result(result)})
        # ClientToolCallEvent: the tool runs in the client; the model is told to call it there.
        return End(outputs={"success": True, "client": True}, subtype="client")


class HumanInput(Activity):
    event_type = "human_input"

    def begin(self, subject: Any, capture: CaptureMiddleware,
              context: Any) -> tuple[Any, dict[str, Any] | None]:
        return {"prompt": getattr(subject, "content", None)}, None

    def end(self, result: Any, capture: CaptureMiddleware) -> End:
        return End(outputs={"answer": getattr(result, "content", None)})


_TURN, _LLM, _TOOL, _HUMAN = Turn(), LLMCall(), ToolCall(), HumanInput()


def _channel_span(runtime: Runtime, context: Any) -> Span | None:
    """The open span of the ``ag2.network`` channel whose envelope started this turn."""
    if not runtime.channels:
        return None
    channel = (getattr(context, "dependencies", None) or {}).get(CHANNEL_DEPENDENCY)
    return runtime.channels.get(getattr(channel, "channel_id", None) or "")


# --- readers -------------------------------------------------------------------------------


_NO_FIELDS: dict[str, Any] = {}


def fields(event: Any) -> dict[str, Any]:
    """An AG2 event's field values by name. AG2 keeps them in the instance's ``__dict__``
    behind one descriptor per field; read there, a field costs a tenth of reading it through
    its descriptor, and a turn reads about forty (tests/ag2_v1 checks, on every supported
    release, that both readings agree for each field read here)."""
    try:
        return event.__dict__  # type: ignore[no-any-return]
    except AttributeError:  # not an AG2 event: nothing is read from it
        return _NO_FIELDS


def event_text(event: Any) -> Any:
    """What an AG2 event says: its text parts, its content, or its type."""
    parts = fields(event).get("parts")
    if isinstance(parts, list):
        texts = []
        for part in parts:
            text = fields(part).get("content")
            if isinstance(text, str):
                texts.append(text)
        return "\n".join(texts) if texts else [type(p).__name__ for p in parts]
    if isinstance(event, ModelResponse):
        return response_text(event)
    content = getattr(event, "content", None)
    return content if isinstance(content, str) else type(event).__name__


def response_text(response: Any) -> Any:
    """A model response's text (``ModelResponse.content`` reads its message's)."""
    if type(response) is not ModelResponse:  # a subclass may say it otherwise
        return getattr(response, "content", None)
    message = fields(response).get("message")
    return fields(message).get("content") if message is not None else None


def _requested(call: dict[str, Any]) -> dict[str, Any]:
    """A tool call as the model asked for it (from its fields)."""
    return {"id": call.get("id"), "name": call.get("name"), "arguments": call.get("arguments")}


def tool_inputs(call: Any) -> dict[str, Any]:
    call_fields = fields(call)
    return {"name": call_fields.get("name"), "call_id": call_fields.get("id"),
            "arguments": call_fields.get("arguments")}


def tool_result(result: Any) -> Any:
    """A tool's result: its text or data parts (one part unwrapped)."""
    parts: Sequence[Any] = getattr(fields(result).get("result"), "parts", None) or ()
    if len(parts) == 1:
        return _part_value(parts[0])
    return [_part_value(part) for part in parts]


_MISSING = object()


def _part_value(part: Any) -> Any:
    """A tool result part's text, else its data, else its type's name."""
    content = getattr(part, "content", _MISSING)
    return content if content is not _MISSING else getattr(part, "data", type(part).__name__)


def reset(var: ContextVar[Any], token: Token[Any] | None) -> None:
    """Undo a ``ContextVar.set``, unless it was made in another context."""
    if token is not None:
        try:
            var.reset(token)
        except (ValueError, RuntimeError):  # closed in another context: nothing to undo
            pass
