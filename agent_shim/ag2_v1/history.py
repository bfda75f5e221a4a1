"""What a conversation's history holds that no middleware hook sees, read at each LLM call.

AG2 hands ``on_llm_call`` the conversation's history. Two kinds of event in it reach no hook:
calls to tools the agent does not have (AG2 answers them with a ``ToolNotFoundEvent`` without
running tool middleware: a failed ``tool_call``), and the life of the sub-tasks its tools start
(``as_tool``, ``run_subtask(s)``, ``background_agent_tool``: a ``message`` with each objective,
then one with each result or failure). A stream subscription would see them as they are sent,
but builds a ``fast_depends`` model each time (about 0.6 ms, several times what this capture adds
to a whole turn), so the history is read instead, from where the previous LLM call of the same
conversation stopped reading. That is what makes the reading independent of when an event
lands: a background task's ``TaskStarted`` can land before or after the tool round's
``ToolResultsEvent``, or during the next LLM call; its ``TaskCompleted`` lands after the
delegating turn has ended and is read at the next LLM call of that conversation (the one its
result is delivered to).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ag2.events import (
    ModelResponse,
    TaskCompleted,
    TaskFailed,
    TaskStarted,
    ToolNotFoundEvent,
    ToolResultsEvent,
)

if TYPE_CHECKING:
    from ..tracker import Tracker

_TASK_EVENTS = (TaskStarted, TaskCompleted, TaskFailed)
_UNSEEN = (ToolResultsEvent, *_TASK_EVENTS)


class HistoryReader:
    """Where each conversation's history was last read, for its most recent conversations.

    A position is the number of events read and the last of them: AG2's in-memory storage
    hands the very list it appends to, so the last event read is still at its place unless the
    history was rewritten (compaction) or comes from a storage that rebuilds its events (Redis);
    then, as for a conversation not seen before or forgotten, reading starts after the last model
    response (what the previous LLM call of the conversation answered).
    """

    def __init__(self, conversations: int = 1024) -> None:
        self._limit = conversations
        self._read: dict[Any, tuple[int, Any]] = {}
        #: Agents may run in several event loops' threads: each dict operation is atomic, and
        #: a conversation's own LLM calls are one after another (AG2 serialises its turns).
        self._lock = threading.Lock()

    def _evict(self) -> None:
        """Forget the least recently read conversations beyond the limit."""
        positions = self._read
        with self._lock:  # two threads' evictions must not pick the same oldest one
            while len(positions) > self._limit:
                try:
                    positions.pop(next(iter(positions)), None)
                except RuntimeError:  # another thread read a conversation meanwhile
                    continue

    def unread(self, conversation: Any, events: Sequence[Any]) -> Sequence[Any]:
        """The events of ``conversation``'s history not read yet; they count as read now."""
        end = len(events)
        positions = self._read
        read = positions.pop(conversation, None)  # popped and put back: most recent last
        positions[conversation] = (end, events[-1] if end else None)
        if len(positions) > self._limit:
            self._evict()
        if read is not None:
            count, last = read
            if 0 < count <= end and events[count - 1] is last:
                return events[count:]
        start = end
        while start and not isinstance(events[start - 1], ModelResponse):
            start -= 1
        return events[start:]


def record_unseen(tracker: Tracker, reader: HistoryReader, agent: str | None,
                  conversation: Any, events: Sequence[Any]) -> None:
    """Record what ``events`` (a conversation's history at an LLM call of ``agent``) holds that
    no hook saw and was not recorded yet; it hangs in the current scope (the calling turn)."""
    for event in reader.unread(conversation, events):
        if not isinstance(event, _UNSEEN):
            continue
        if isinstance(event, ToolResultsEvent):
            for result in event.results:
                if isinstance(result, ToolNotFoundEvent):
                    tracker.event("tool_call", subtype="unknown_tool", agent_name=agent,
                                  status="failed",
                                  inputs={"name": result.name, "call_id": result.parent_id},
                                  outputs={"success": False},
                                  error=f"unknown tool {result.name!r}")
        else:
            _record_task_event(tracker, agent, event)


def _record_task_event(tracker: Tracker, agent: str | None, event: Any) -> None:
    """A sub-task's objective (from ``agent``, the delegating agent), result or failure (to it)."""
    started = isinstance(event, TaskStarted)
    failed = isinstance(event, TaskFailed)
    sender, recipient = (agent, event.agent_name) if started else (event.agent_name, agent)
    content = (event.objective if started else None if failed
               else getattr(event, "result", None))
    tracker.event("message", subtype=f"task_{type(event).__name__[4:].lower()}",
                  agent_name=sender, status="failed" if failed else "completed",
                  error=f"{type(event.error).__name__}: {event.error}" if failed else None,
                  inputs={"sender": sender, "recipient": recipient, "content": content},
                  meta={"task_id": event.task_id, "objective": event.objective})
