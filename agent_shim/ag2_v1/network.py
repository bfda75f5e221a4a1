"""Capture of ``ag2.network`` hubs through their own extension point, the ``HubListener``.

``install()`` patches ``Hub.__init__`` to register one :class:`CaptureListener` on every hub
(``Hub.register_listener``, AG2's API) and ``Hub.close`` to end the channels still open when
the hub goes. A channel is a ``conversation`` span from its creation to its close or expiry;
its text and packet envelopes are ``message`` events in it, and where a workflow channel goes
after each (a tool's ``Handoff`` or ``Finish``, a graph transition, the graph's default target,
its turn limit) is a ``handoff`` event (read from the state the hub folded for that envelope,
replayed from the channel's log when the hub has moved on). Failed turns, expectation
violations and failed dispatches the hub reports are failed ``message`` points in the channel.
A turn an envelope triggers finds its channel in the turn's dependencies
(``ag2.network.channel``, stamped by the network client) and hangs under the channel's span
(see ``capture.CaptureMiddleware``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from ag2.network import BaseHubListener, Hub, TransitionGraph, WorkflowAdapter, WorkflowState

from .capture import Runtime

#: Envelope types that carry what agents say; the channel lifecycle ones are the span itself.
_TEXT, _PACKET = "ag2.msg.text", "ag2.packet"
_CLOSING = {"closed": "completed", "expired": "failed"}
#: How the hub words the close reason of a channel an expectation violation closed.
_VIOLATED = "expectation_violated"


class CaptureListener(BaseHubListener):  # type: ignore[misc]
    """Records one hub's channels, envelopes, routing and what went wrong in them (failed
    turns, expectation violations, failed dispatches: failed ``message`` points whose subtype
    says which); the listener methods it does not override (tasks, inbox pressure) record
    nothing."""

    def __init__(self, runtime: Runtime, hub: Hub) -> None:
        self.runtime = runtime
        self.hub = hub
        self.names: dict[str, str] = {}
        self.open_channels: set[str] = set()

    def name(self, agent_id: str | None) -> str | None:
        return self.names.get(agent_id or "", agent_id)

    async def on_agent_event(self, agent_id: str, kind: str, payload: dict[str, Any]) -> None:
        passport = payload.get("passport") if isinstance(payload, dict) else None
        if kind == "registered" and passport is not None:
            self.names[agent_id] = getattr(passport, "name", agent_id)

    async def on_channel_event(self, channel_id: str, kind: str, payload: dict[str, Any]) -> None:
        self._guarded(self._channel_event, channel_id, kind, payload)

    async def on_envelope_posted(self, envelope: Any, metadata: Any) -> None:
        state = None
        if self.runtime.enabled and envelope.event_type in (_TEXT, _PACKET):
            try:
                state = await self._folded(envelope, metadata)
            except Exception as exc:
                self.runtime.disable("hub listener replay", exc)
        self._guarded(self._envelope, envelope, None, state)

    async def on_envelope_rejected(self, envelope: Any, reason: BaseException) -> None:
        self._guarded(self._envelope, envelope, reason)

    async def on_turn_failed(self, channel_id: str, agent_id: str, envelope_id: str,
                             exc: BaseException) -> None:
        self._guarded(self._notice, channel_id, "turn_failed", self.name(agent_id), exc,
                      {"envelope_id": envelope_id})

    async def on_expectation_fired(self, channel_id: str, expectation: Any,
                                   violation: Any) -> None:
        self._guarded(self._violation, channel_id, expectation, violation)

    async def on_dispatch_failed(self, envelope: Any, recipient_id: str,
                                 reason: BaseException) -> None:
        self._guarded(self._dispatch_failed, envelope, recipient_id, reason)

    def close_all(self, reason: str) -> None:
        """End the channels still open (their hub is closing)."""
        for channel_id in list(self.open_channels):
            self._guarded(self._end_channel, channel_id, "completed", reason)

    # --- recording ------------------------------------------------------------------------

    def _guarded(self, record: Any, *args: Any) -> None:
        runtime = self.runtime
        if not runtime.enabled:
            return
        try:
            record(*args)
        except Exception as exc:
            runtime.disable(f"hub listener {record.__name__}", exc)

    def _channel_event(self, channel_id: str, kind: str, payload: dict[str, Any]) -> None:
        if kind == "created":
            metadata = payload.get("metadata")
            creator = self.name(getattr(metadata, "creator_id", None))
            participants = [self.name(p) for p in payload.get("participants") or ()]
            manifest = getattr(metadata, "manifest", None)
            span = self.runtime.tracker.start_span(
                "conversation", subtype="channel", agent_name=creator,
                inputs={"initiator": creator, "participants": participants},
                meta={"framework": "ag2", "channel_id": channel_id,
                      "channel_type": getattr(manifest, "type", None)})
            self.runtime.channels[channel_id] = span
            self.open_channels.add(channel_id)
        elif kind in _CLOSING:
            reason = payload.get("reason") or kind
            # A channel an expectation's ``auto_close`` closed did not end well either.
            status = "failed" if str(reason).startswith(_VIOLATED) else _CLOSING[kind]
            self._end_channel(channel_id, status, reason)

    def _end_channel(self, channel_id: str, status: str, reason: str) -> None:
        span = self.runtime.channels.pop(channel_id, None)
        self.open_channels.discard(channel_id)
        if span is not None:
            self.runtime.tracker.end_span(span, status=status, outputs={"reason": reason},
                                          error=reason if status == "failed" else None)

    def current_state(self, channel_id: str) -> Any:
        """The state the hub has folded for a channel so far."""
        return self.hub.adapter_state(channel_id)

    async def _folded(self, envelope: Any, metadata: Any) -> WorkflowState | None:
        """The workflow state the hub folded for ``envelope`` (``None``: not a workflow
        channel). Usually its current state; when the hub has accepted another envelope of the
        channel before telling listeners about this one, it is replayed from the channel's
        write-ahead log, as the hub itself rebuilds a channel's state when it hydrates."""
        state = self.current_state(envelope.channel_id)
        if not isinstance(state, WorkflowState):
            return None
        if state.last_envelope_id == envelope.envelope_id:
            return state
        adapter = WorkflowAdapter()
        replayed = adapter.initial_state(metadata)
        for logged in await self.hub.read_wal(envelope.channel_id):
            replayed = adapter.fold(logged, replayed)
            if logged.envelope_id == envelope.envelope_id:
                return replayed  # type: ignore[no-any-return]
        return None

    def _envelope(self, envelope: Any, rejected: BaseException | None = None,
                  state: WorkflowState | None = None) -> None:
        kind = envelope.event_type
        if kind not in (_TEXT, _PACKET):
            return
        span = self.runtime.channels.get(envelope.channel_id)
        scope = span.inner if span is not None else None
        data = envelope.event_data if isinstance(envelope.event_data, dict) else {}
        sender = self.name(envelope.sender_id)
        tracker = self.runtime.tracker
        tracker.event(
            "message", agent_name=sender, scope=scope,
            status="failed" if rejected is not None else "completed",
            error=f"{type(rejected).__name__}: {rejected}" if rejected is not None else None,
            inputs={"sender": sender,
                    "audience": [self.name(a) for a in envelope.audience or ()] or None,
                    "content": data.get("text", data.get("body"))},
            meta={"envelope_id": envelope.envelope_id, "event_type": kind,
                  "task_id": envelope.task_id})
        if rejected is None:
            routing = data.get("routing") if kind == _PACKET else None
            self._transition(envelope, sender, scope,
                             routing if isinstance(routing, dict) else {}, state)

    def _dispatch_failed(self, envelope: Any, recipient_id: str, reason: BaseException) -> None:
        self._notice(envelope.channel_id, "dispatch_failed", self.name(envelope.sender_id),
                     reason, {"envelope_id": envelope.envelope_id,
                              "event_type": envelope.event_type}, self.name(recipient_id))

    def _violation(self, channel_id: str, expectation: Any, violation: Any) -> None:
        name = getattr(expectation, "name", None)
        violators = [self.name(v) for v in getattr(violation, "violator_ids", None) or ()]
        self._notice(channel_id, "expectation_violated", None,
                     f"expectation {name!r} violated by {violators or 'the channel'}",
                     {"expectation": name, "on_violation": getattr(expectation, "on_violation",
                                                                   None),
                      "params": getattr(expectation, "params", None),
                      "violators": violators, "detail": getattr(violation, "detail", None)})

    def _notice(self, channel_id: str | None, subtype: str, agent: str | None,
                error: BaseException | str, meta: dict[str, Any],
                recipient: str | None = None) -> None:
        """A failed ``message`` point in the channel: what the hub reports went wrong."""
        span = self.runtime.channels.get(channel_id or "")
        if isinstance(error, BaseException):
            error = f"{type(error).__name__}: {error}"
        self.runtime.tracker.event(
            "message", subtype=subtype, agent_name=agent, status="failed", error=error,
            scope=span.inner if span is not None else None,
            inputs={"sender": agent, "recipient": recipient, "content": None},
            meta={"channel_id": channel_id, **meta})

    def _transition(self, envelope: Any, sender: str | None, scope: Any,
                    routing: dict[str, Any], state: WorkflowState | None) -> None:
        """The ``handoff`` an accepted envelope decided: its packet's routing (a tool's
        ``Handoff`` or ``Finish``), else the workflow graph (a transition, the default target,
        the turn limit), read from the state the hub folded for this very envelope."""
        kind = routing.get("kind")
        if kind == "finish":
            decision = Decision("termination", "finish", None, routing.get("reason"))
        elif kind == "handoff" and routing.get("target"):
            decision = Decision("handoff", "handoff", routing["target"], routing.get("reason"))
        elif state is not None and state.graph_data:
            decision = graph_decision(state, envelope)
        elif kind == "handoff":  # a static ToolCalled rule, in a channel with no state to read
            decision = Decision("transition", "tool_called", None, routing.get("reason"))
        else:
            return
        target = self.name(decision.target)
        self.runtime.tracker.event(
            "handoff", subtype=decision.subtype, agent_name=sender, scope=scope,
            inputs={"from": sender}, outputs={"to": target},
            meta={"decided_by": decision.decided_by, "reason": decision.reason,
                  "tool": routing.get("tool"), "terminated": decision.subtype == "termination"})


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a workflow channel goes after an envelope, and what decided it."""

    subtype: str  #: ``transition``, ``default``, ``handoff`` or ``termination``
    decided_by: str  #: the rule's condition (``from_speaker``...), ``default``, ``finish``...
    target: str | None
    reason: str | None = None


def graph_decision(state: Any, envelope: Any) -> Decision:
    """What the workflow graph decided for ``envelope``: the state holds the outcome (the next
    speaker, or none and a close reason); which rule gave it is found as the adapter finds it,
    the first transition by priority whose condition holds, else the default target."""
    graph = TransitionGraph.loads(state.graph_data)
    target, reason = state.expected_next_speaker, state.pending_close_reason or None
    if target is not None and graph.max_turns is not None and state.turn_count >= graph.max_turns:
        return Decision("termination", "max_turns", None, "max_turns")
    rule = next((t.when for t in sorted(graph.transitions, key=lambda t: t.priority)
                 if t.when.evaluate(state, envelope)), None)
    decided_by = getattr(rule, "name", type(rule).__name__) if rule is not None else "default"
    if target is None:
        return Decision("termination", decided_by, None, reason)
    return Decision("default" if rule is None else "transition", decided_by, target, reason)


def patch_hub(runtime: Runtime) -> list[tuple[Any, str, Any]]:
    """Patch ``Hub.__init__`` and ``Hub.close``; returns ``(owner, name, original)`` to undo."""
    original_init, original_close = Hub.__init__, Hub.close

    @functools.wraps(original_init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        if runtime.enabled:
            try:
                self.register_listener(CaptureListener(runtime, self))
            except Exception as exc:
                runtime.disable("Hub.__init__", exc)

    @functools.wraps(original_close)
    async def close(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await original_close(self, *args, **kwargs)
        finally:
            for listener in getattr(self, "_listeners", ()):
                if isinstance(listener, CaptureListener):
                    listener.close_all("hub closed")

    Hub.__init__ = __init__  # type: ignore[method-assign]
    Hub.close = close  # type: ignore[method-assign]
    return [(Hub, "__init__", original_init), (Hub, "close", original_close)]
