"""Installing and removing the AG2 hooks.

Every hook is a class-level wrapper on a method AG2 looks up by attribute at call time (never a
reply function captured by reference in ``_reply_func_list``). Each wrapped attribute is
recorded with its original, so :meth:`Installation.remove` puts back exactly what was there.

Subclasses that override a hooked method get their override wrapped too: those that exist at
install time are found through ``__subclasses__()``, later ones when their first instance is
constructed (``ConversableAgent.__init__`` is wrapped for that, and also adopts the agent's code
executor class and its group chat's class). A ``super()`` call from an override into the base
wrapper is recognised and recorded once (see ``wrapping.INNERMOST``).
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from ..tracker import Tracker
from .activities import (
    AgentCall,
    CodeExecution,
    Conversation,
    Handoff,
    HumanInput,
    LegacyCodeExecution,
    LLMCall,
    Message,
    ToolCall,
)
from .propagation import THREADING_MODULES, ThreadingProxy
from .wrapping import WRAPPED_ATTR, Activity, Hook, Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Patch:
    """One attribute we replaced, and what was there before."""

    owner: Any
    name: str
    original: Any


class Family:
    """A class hierarchy and the methods hooked in it (``name -> Hook``)."""

    def __init__(self, label: str, hooks: dict[str, Hook]) -> None:
        self.label = label
        self.hooks = hooks
        self.adopted: weakref.WeakSet[type] = weakref.WeakSet()


class Installation:
    """The hooks of one ``install()``; ``remove()`` undoes every patch in reverse order."""

    def __init__(self, tracker: Tracker) -> None:
        self.runtime = Runtime(tracker)
        self.patches: list[Patch] = []
        self._lock = threading.RLock()
        origins = self.runtime.tool_origins
        agent_call, tool_call, conversation, human = (AgentCall(), ToolCall(origins),
                                                      Conversation(), HumanInput())
        self.agents = self._family("ConversableAgent", {
            "generate_reply": agent_call, "a_generate_reply": agent_call,
            "send": Message(), "a_send": Message(),
            "execute_function": tool_call, "a_execute_function": tool_call,
            "execute_code_blocks": LegacyCodeExecution(),
            "initiate_chat": conversation, "a_initiate_chat": conversation,
            "get_human_input": human, "a_get_human_input": human,
        })
        self.groupchats = self._family("GroupChat", {"select_speaker": Handoff(),
                                                     "a_select_speaker": Handoff()})
        self.llm = self._family("OpenAIWrapper", {"create": LLMCall(origins)})
        self.executors = self._family("CodeExecutor", {"execute_code_blocks": CodeExecution()})

    def _family(self, label: str, activities: dict[str, Activity]) -> Family:
        return Family(label, {name: Hook(f"{label}.{name}", activity, self.runtime)
                              for name, activity in activities.items()})

    # --- applying ---------------------------------------------------------------------------

    def apply(self) -> None:
        """Patch AG2 (``autogen`` must be importable)."""
        from autogen import ConversableAgent, GroupChat, OpenAIWrapper

        for family, root in ((self.agents, ConversableAgent), (self.groupchats, GroupChat),
                             (self.llm, OpenAIWrapper)):
            for cls in _class_tree(root):
                self.adopt(cls, family)
        for cls in _executor_classes():
            self.adopt(cls, self.executors)
        self._patch(ConversableAgent, "__init__", self._adopting_init(ConversableAgent.__init__))
        for name in THREADING_MODULES:
            module = sys.modules.get(name) or _import(name)
            if module is not None and getattr(module, "threading", None) is threading:
                self._patch(module, "threading", ThreadingProxy())

    def adopt(self, cls: type, family: Family) -> None:
        """Wrap the hooked methods that ``cls`` or a class in its MRO defines itself."""
        with self._lock:
            for klass in cls.__mro__[:-1]:  # not ``object``
                if klass in family.adopted:
                    continue
                family.adopted.add(klass)
                for name, hook in family.hooks.items():
                    raw = klass.__dict__.get(name)
                    if inspect.isfunction(raw) and not hasattr(raw, WRAPPED_ATTR):
                        self._patch(klass, name, hook.wrap(raw))

    def _adopting_init(self, original: Callable[..., None]) -> Callable[..., None]:
        """``ConversableAgent.__init__`` that adopts classes first seen in a new agent."""

        @functools.wraps(original)
        def __init__(agent: Any, *args: Any, **kwargs: Any) -> None:
            original(agent, *args, **kwargs)
            try:
                self._adopt_agent(agent)
            except Exception as exc:  # never let our bookkeeping break the user's agent
                log.warning("cmbagent-tracking: could not adopt %s", type(agent).__name__,
                            exc_info=exc)

        setattr(__init__, WRAPPED_ATTR, original)
        return __init__

    def _adopt_agent(self, agent: Any) -> None:
        for family, obj in ((self.agents, agent),
                            (self.executors, agent.__dict__.get("_code_executor")),
                            (self.groupchats, agent.__dict__.get("_groupchat"))):
            if obj is not None and type(obj) not in family.adopted:
                self.adopt(type(obj), family)

    def _patch(self, owner: Any, name: str, replacement: Any) -> None:
        self.patches.append(Patch(owner, name, owner.__dict__[name]))
        setattr(owner, name, replacement)

    # --- removing ---------------------------------------------------------------------------

    def remove(self) -> None:
        """Put back every original attribute, newest patch first."""
        with self._lock:
            for patch in reversed(self.patches):
                setattr(patch.owner, patch.name, patch.original)
            self.patches.clear()
            for family in (self.agents, self.groupchats, self.llm, self.executors):
                family.adopted = weakref.WeakSet()


def _class_tree(root: type) -> list[type]:
    """``root`` and all its subclasses defined so far."""
    seen: list[type] = []
    pending = [root]
    while pending:
        cls = pending.pop()
        if cls not in seen:
            seen.append(cls)
            pending.extend(cls.__subclasses__())
    return seen


def _executor_classes() -> list[type]:
    """The code executor classes of ``autogen.coding`` loaded so far (protocols excluded)."""
    _import("autogen.coding.local_commandline_code_executor")
    found = []
    for name, module in list(sys.modules.items()):
        if not name.startswith("autogen.coding") or module is None:
            continue
        for value in list(vars(module).values()):
            if (isinstance(value, type) and value.__module__ == name
                    and inspect.isfunction(value.__dict__.get("execute_code_blocks"))
                    and not getattr(value, "_is_protocol", False)):
                found.append(value)
    return found


def _import(name: str) -> Any:
    try:
        return import_module(name)
    except Exception:  # an optional AG2 module missing from this version or fork
        log.debug("cmbagent-tracking: %s not importable", name, exc_info=True)
        return None
