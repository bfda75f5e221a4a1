"""How the next speaker of a group chat is being decided, read before ``select_speaker`` runs.

Classic group chats name their method (``auto``, ``round_robin``, ``random``, ``manual``). The
new group chat (``initiate_group_chat`` with a pattern) uses a transition function built by
``group_utils.create_group_transition``; its decision follows a fixed order, which we mirror by
reading the same state it is about to consume (the reason must be read *before* the call: the
transition clears the tool executor's target and the context-condition flag).

The transition events of AG2 0.10+ carry the same reasons, but 0.9.x and CMBAgent's fork do not
have them; reading state works on every version.
"""

from __future__ import annotations

from typing import Any

TRANSFER_PREFIX = "transfer_to_"
CONTEXT_HANDOFF_PREFIX = "[Handing off to "


def decided_by(groupchat: Any, last_speaker: Any) -> str:
    """One of: the classic method's name, ``custom``, or for the new group chat ``initial``,
    ``tool_call``, ``on_context_condition``, ``on_condition``, ``reply_result``, ``tool_return``,
    ``after_work``, ``group_after_work``."""
    method = getattr(groupchat, "speaker_selection_method", None)
    if isinstance(method, str):
        return method
    state = _closure(method, "state")
    if not isinstance(state, dict):
        return "custom"
    if state.get("use_initial_agent"):
        return "initial"
    messages = getattr(groupchat, "messages", None) or [{}]
    last = messages[-1]
    if "tool_calls" in last:
        return "tool_call"
    manager = getattr(last_speaker, "_group_manager", None)
    content = last.get("content")
    if getattr(manager, "_next_target_force", None) is not None or (
        isinstance(content, str) and content.startswith(CONTEXT_HANDOFF_PREFIX)
    ):
        return "on_context_condition"
    executor = _closure(method, "tool_execution")
    has_target = getattr(executor, "has_next_target", None)
    if callable(has_target) and has_target():
        return "on_condition" if _asked_for_transfer(messages) else "reply_result"
    if last.get("role") == "tool":
        return "tool_return"
    handoffs = getattr(last_speaker, "handoffs", None)
    # ``after_works`` (a list of conditions) since 0.10; one ``after_work`` target before.
    own = getattr(handoffs, "after_works", None) or getattr(handoffs, "after_work", None)
    return "after_work" if own else "group_after_work"


def _closure(function: Any, name: str) -> Any:
    """The value of a free variable of ``function`` (``None`` if it has none by that name)."""
    code = getattr(function, "__code__", None)
    cells = getattr(function, "__closure__", None)
    if code is None or not cells or name not in code.co_freevars:
        return None
    return cells[code.co_freevars.index(name)].cell_contents


def _asked_for_transfer(messages: list[dict[str, Any]]) -> bool:
    """Whether the tool round that just ended called an OnCondition ``transfer_to_*`` tool."""
    for message in reversed(messages):
        calls = message.get("tool_calls")
        if calls:
            return any(str(c.get("function", {}).get("name", "")).startswith(TRANSFER_PREFIX)
                       for c in calls if isinstance(c, dict))
    return False
