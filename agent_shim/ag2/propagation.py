"""Keeping parent links right where AG2 leaves the caller's thread or task.

AG2 loses ``contextvars`` at four hops (see docs/ag2-capture.md): ``run()``/``run_iter()``,
``run_group_chat()`` and friends, ``_run_async_in_thread`` (an async tool in a sync chat), and
``loop.run_in_executor`` for every async LLM call.

- The first three all call ``threading.Thread`` through the module-global name ``threading`` of
  two AG2 modules. :class:`ThreadingProxy` replaces that name there (and only there) with a
  module look-alike whose ``Thread`` runs its target in a copy of the creator's context.
- The executor hop cannot be fixed that way without patching asyncio for the whole process, so
  :class:`AgentScopes` remembers the scope inside each agent's open ``generate_reply`` span; an
  LLM call that arrives with no current scope adopts the scope of the agent it was made for.
"""

from __future__ import annotations

import contextvars
import threading
import types
from collections import OrderedDict
from typing import Any

from ..context import Scope

#: AG2 modules that start threads through their module-global ``threading``.
THREADING_MODULES = (
    "autogen.agentchat.conversable_agent", "autogen.agentchat.group.multi_agent_chat")


class ContextThread(threading.Thread):
    """A ``threading.Thread`` whose target runs in the context of the code that created it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cmbagent_context = contextvars.copy_context()

    def run(self) -> None:
        self._cmbagent_context.run(super().run)


class ThreadingProxy(types.ModuleType):
    """Stands in for ``threading`` inside one AG2 module: ``Thread`` copies the context."""

    Thread = ContextThread

    def __init__(self) -> None:
        super().__init__("threading", threading.__doc__)

    def __getattr__(self, name: str) -> Any:
        return getattr(threading, name)


class AgentScopes:
    """The scopes inside the open agent-call spans, by the call; the latest of an agent wins.

    Every agent call is added and removed (a dict item, atomic: no lock on the caller's path);
    only a call that arrives with no current scope looks for its agent's latest.
    """

    def __init__(self) -> None:
        #: call → (id of its agent, scope inside its span), in the order the calls began.
        self._open: dict[object, tuple[int, Scope]] = {}

    def push(self, call: object, agent: object, scope: Scope) -> None:
        self._open[call] = (id(agent), scope)

    def pop(self, call: object) -> None:
        # Concurrent calls of one agent may end out of order: each removes its own.
        self._open.pop(call, None)

    def latest(self, agent: object) -> Scope | None:
        wanted = id(agent)
        # A copy is made in one step (no Python code runs while it is made), so calls on other
        # threads cannot change the items while they are read.
        for owner, scope in reversed(self._open.copy().values()):
            if owner == wanted:
                return scope
        return None


class ToolCallOrigins:
    """Which agent's LLM response asked for each tool call id (bounded, oldest forgotten).

    In a group chat the tool runs on the internal tool executor, so the asking agent is known
    only from the LLM response that contained the call.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self._origins: OrderedDict[str, str] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def remember(self, call_id: str, agent_name: str) -> None:
        with self._lock:
            self._origins[call_id] = agent_name
            if len(self._origins) > self._capacity:
                self._origins.popitem(last=False)

    def take(self, call_id: str | None) -> str | None:
        if call_id is None:
            return None
        with self._lock:
            return self._origins.pop(call_id, None)
