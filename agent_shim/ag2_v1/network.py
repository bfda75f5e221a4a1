"""Capture of ``ag2.network`` hubs through their own extension point, the ``HubListener``.

``install()`` patches ``Hub.__init__`` to register one :class:`CaptureListener` on every hub
(``Hub.register_listener``, AG2's API) and ``Hub.close`` to end the channels still open when
the hub goes. A channel is a ``conversation`` span from its creation to its close or expiry;
its text and packet envelopes are ``message`` events in it, and a packet's routing (a static
tool handoff, a dynamic ``Handoff``, a ``Finish``) is a ``handoff`` event. A turn an envelope
triggers finds its channel in the turn's dependencies (``ag2.network.channel``, stamped by the
network client) and hangs under the channel's span (see ``capture.CaptureMiddleware``).
"""

from __future__ import annotations

import functools
from typing import Any

from ag2.network import BaseHubListener, Hub

from .capture import Runtime

#: Envelope types that carry what agents say; the channel lifecycle ones are the span itself.
_TEXT, _PACKET = "ag2.msg.text", "ag2.packet"
_CLOSING = {"closed": "completed", "expired": "failed"}


class CaptureListener(BaseHubListener):  # type: ignore[misc]
    """Records one hub's channels, envelopes and routing; the listener methods it does not
    override (dispatch failures, expectations, tasks, inbox pressure) record nothing."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
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
        self._guarded(self._envelope, envelope)

    async def on_envelope_rejected(self, envelope: Any, reason: BaseException) -> None:
        self._guarded(self._envelope, envelope, reason)

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
            self._end_channel(channel_id, _CLOSING[kind], payload.get("reason") or kind)

    def _end_channel(self, channel_id: str, status: str, reason: str) -> None:
        span = self.runtime.channels.pop(channel_id, None)
        self.open_channels.discard(channel_id)
        if span is not None:
            self.runtime.tracker.end_span(span, status=status, outputs={"reason": reason},
                                          error=reason if status == "failed" else None)

    def _envelope(self, envelope: Any, rejected: BaseException | None = None) -> None:
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
        routing = data.get("routing") if kind == _PACKET and rejected is None else None
        if isinstance(routing, dict) and routing.get("kind") in ("handoff", "finish"):
            finish = routing["kind"] == "finish"
            # A Handoff returned by a tool names its target; a static ToolCalled rule leaves
            # the target to the channel's graph.
            how = "finish" if finish else "handoff" if routing.get("target") else "tool_called"
            target = None if finish else self.name(routing.get("target"))
            tracker.event("handoff", subtype="termination" if finish else how,
                          agent_name=sender, scope=scope, inputs={"from": sender},
                          outputs={"to": target},
                          meta={"decided_by": how, "reason": routing.get("reason"),
                                "tool": routing.get("tool"), "terminated": finish})


def patch_hub(runtime: Runtime) -> list[tuple[Any, str, Any]]:
    """Patch ``Hub.__init__`` and ``Hub.close``; returns ``(owner, name, original)`` to undo."""
    original_init, original_close = Hub.__init__, Hub.close

    @functools.wraps(original_init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        if runtime.enabled:
            try:
                self.register_listener(CaptureListener(runtime))
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
