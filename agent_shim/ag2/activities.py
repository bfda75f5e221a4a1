"""What each hooked AG2 method records: inputs at entry, outputs and status at exit.

Values are passed raw; the tracker freezes them with msgpack and the sender redacts and
truncates them (``agent_shim.payload``). Only the last input message of a call is recorded,
never whole histories.
"""

from __future__ import annotations

from typing import Any

from .handoff import TRANSFER_PREFIX, decided_by
from .propagation import ToolCallOrigins
from .wrapping import Activity, Args, End, Kwargs, Start, caller

# --- small readers -------------------------------------------------------------------------


def arg(args: Args, kwargs: Kwargs, index: int, name: str, default: Any = None) -> Any:
    """A parameter passed by position (``args[0]`` is ``self``) or by keyword."""
    return args[index] if len(args) > index else kwargs.get(name, default)


def name_of(agent: Any) -> str | None:
    name = getattr(agent, "name", None)
    return name if name is None or isinstance(name, str) else str(name)


_ROLE_CLASSES = {"GroupChatManager": "group_manager", "GroupToolExecutor": "tool_executor"}
_ROLE_NAMES = {
    "checking_agent": "speaker_selector",
    "speaker_selection_agent": "speaker_selector",
    "_Group_Tool_Executor": "tool_executor",
    "_Swarm_Tool_Executor": "tool_executor",
    "_User": "temporary_user",
}
_role_by_class: dict[type, str | None] = {}


def role_of(agent: Any, name: str | None = None) -> str | None:
    """The part an agent AG2 creates for itself plays, or ``None`` for the program's agents
    (``name``: the agent's, when the caller has it already)."""
    cls = type(agent)
    if cls not in _role_by_class:
        _role_by_class[cls] = next(
            (_ROLE_CLASSES[c.__name__] for c in cls.__mro__ if c.__name__ in _ROLE_CLASSES), None
        )
    return _role_by_class[cls] or _ROLE_NAMES.get(name or name_of(agent) or "")


def agent_meta(agent: Any, name: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"class": type(agent).__name__}
    role = role_of(agent, name)
    if role is not None:
        meta["internal"] = True
        meta["role"] = role
    return meta


def last_of(messages: Any) -> Any:
    try:
        return messages[-1] if messages else None
    except (TypeError, KeyError, IndexError):
        return None


def text(value: Any) -> Any:
    """A message as recorded: strings and dicts as they are, anything else as text."""
    return value if value is None or isinstance(value, (str, dict, list)) else repr(value)


# --- activities ----------------------------------------------------------------------------


class AgentCall(Activity):
    """``generate_reply`` / ``a_generate_reply``: one reply an agent generates."""

    event_type = "agent_call"

    def begin(self, args: Args, kwargs: Kwargs) -> Start:
        agent = args[0]
        messages = arg(args, kwargs, 1, "messages")
        sender = arg(args, kwargs, 2, "sender")
        if messages is None and sender is not None:
            # Group chats pass only the sender; the reply is to the agent's history with it.
            messages = getattr(agent, "_oai_messages", {}).get(sender)
        inputs = {"sender": name_of(sender), "message": last_of(messages),
                  "messages": len(messages) if isinstance(messages, list) else None}
        name = name_of(agent)
        return Start(agent_name=name, inputs=inputs, meta=agent_meta(agent, name), owner=agent,
                     sender=sender)

    def end(self, result: Any, start: Start) -> End:
        return End(outputs={"reply": text(result)})


class Message(Activity):
    """``send`` / ``a_send``: a point event, recorded once per message.

    A group chat manager relays every message to every participant with
    ``request_reply=False, silent=True`` (and replays history the same way on ``resume`` and
    for introductions). The message itself is recorded when its speaker sends it to the
    manager, so the relays are not recorded again.
    """

    event_type = "message"
    point = True

    def begin(self, args: Args, kwargs: Kwargs) -> Start | None:
        sender = args[0]
        message = arg(args, kwargs, 1, "message")
        recipient = arg(args, kwargs, 2, "recipient")
        request_reply = arg(args, kwargs, 3, "request_reply")
        silent = arg(args, kwargs, 4, "silent", False)
        if request_reply is False and silent and (
            role_of(sender) == "group_manager" or role_of(recipient) == "group_manager"
        ):
            return None
        inputs = {"sender": name_of(sender), "recipient": name_of(recipient),
                  "content": text(message)}
        meta = {"request_reply": request_reply, "silent": bool(silent)}
        if role_of(sender) or role_of(recipient):
            meta["internal"] = True
        return Start(agent_name=name_of(sender), inputs=inputs, meta=meta)


class ToolCall(Activity):
    """``execute_function`` / ``a_execute_function``: one tool call.

    AG2 never lets a tool's exception out; it returns ``(False, {"content": "Error: ..."})``,
    which is recorded as ``failed`` with that content as the error.
    """

    event_type = "tool_call"

    def __init__(self, origins: ToolCallOrigins) -> None:
        self.origins = origins

    def begin(self, args: Args, kwargs: Kwargs) -> Start:
        executor = args[0]
        func_call = arg(args, kwargs, 1, "func_call") or {}
        call_id = arg(args, kwargs, 2, "call_id")
        name = func_call.get("name") if isinstance(func_call, dict) else None
        agent_call = caller()
        asked_by = self.origins.take(call_id) or (
            name_of(agent_call[1]) if agent_call is not None and agent_call[0] is executor
            else None
        )
        handoff = isinstance(name, str) and name.startswith(TRANSFER_PREFIX)
        inputs = {"name": name, "call_id": call_id,
                  "arguments": func_call.get("arguments") if isinstance(func_call, dict) else None}
        meta = {"executor": name_of(executor), "handoff": handoff}
        return Start(agent_name=asked_by or name_of(executor),
                     subtype="handoff" if handoff else None, inputs=inputs, meta=meta,
                     fallback_agent=executor)

    def end(self, result: Any, start: Start) -> End:
        paired = isinstance(result, tuple) and len(result) == 2
        success, response = result if paired else (True, result)
        content = response.get("content") if isinstance(response, dict) else response
        success = bool(success)
        return End(status="completed" if success else "failed",
                   outputs={"success": success, "content": text(content)},
                   error=None if success else str(content))


def _code_end(exit_code: Any, output: Any, code_file: Any = None) -> End:
    failed = exit_code != 0
    return End(status="failed" if failed else "completed",
               outputs={"exit_code": exit_code, "output": output, "code_file": code_file},
               error=f"exit code {exit_code}" if failed else None)


class CodeExecution(Activity):
    """``<CodeExecutor>.execute_code_blocks``: one execution through a code executor."""

    event_type = "code_exec"

    def begin(self, args: Args, kwargs: Kwargs) -> Start:
        executor = args[0]
        blocks = arg(args, kwargs, 1, "code_blocks") or []
        agent_call = caller()
        agent = agent_call[0] if agent_call is not None else None
        inputs = {"blocks": [{"language": getattr(b, "language", None),
                              "code": getattr(b, "code", b)} for b in blocks]}
        return Start(agent_name=name_of(agent), inputs=inputs,
                     meta={"executor": type(executor).__name__, "legacy": False})

    def end(self, result: Any, start: Start) -> End:
        return _code_end(getattr(result, "exit_code", None), getattr(result, "output", None),
                         getattr(result, "code_file", None))


class LegacyCodeExecution(Activity):
    """``ConversableAgent.execute_code_blocks``: one execution on the legacy path."""

    event_type = "code_exec"

    def begin(self, args: Args, kwargs: Kwargs) -> Start:
        agent = args[0]
        blocks = arg(args, kwargs, 1, "code_blocks") or []
        inputs = {"blocks": [{"language": b[0], "code": b[1]} if isinstance(b, (tuple, list))
                             and len(b) == 2 else {"language": None, "code": b} for b in blocks]}
        return Start(agent_name=name_of(agent), inputs=inputs,
                     meta={"executor": "legacy", "legacy": True})

    def end(self, result: Any, start: Start) -> End:
        exit_code, output = result[:2] if isinstance(result, tuple) else (None, result)
        return _code_end(exit_code, output)


class Handoff(Activity):
    """``GroupChat.select_speaker`` / ``a_select_speaker``: who speaks next, and why.

    ``NoEligibleSpeakerError`` is how a group chat ends on a ``TerminateTarget`` (or a method
    returning ``None``): it is recorded as a completed ``termination``, not as a failure.
    """

    event_type = "handoff"

    def begin(self, args: Args, kwargs: Kwargs) -> Start:
        groupchat = args[0]
        last_speaker = arg(args, kwargs, 1, "last_speaker")
        how = decided_by(groupchat, last_speaker)
        return Start(agent_name=name_of(last_speaker), subtype=how,
                     inputs={"from": name_of(last_speaker)}, meta={"decided_by": how})

    def end(self, result: Any, start: Start) -> End:
        return End(outputs={"to": name_of(result)})

    def fail(self, exc: BaseException, start: Start) -> End:
        if type(exc).__name__ == "NoEligibleSpeakerError":
            return End(outputs={"to": None}, subtype="termination",
                       meta={"terminated": True, "decided_by": start.subtype})
        return super().fail(exc, start)


class LLMCall(Activity):
    """``OpenAIWrapper.create``: one LLM call (every agent, summary and speaker selection).

    Async agents reach it on an executor thread with no current scope, so its parent falls back
    to the calling agent's open span (``agent=`` is passed by AG2).
    """

    event_type = "llm_call"

    def __init__(self, origins: ToolCallOrigins) -> None:
        self.origins = origins

    def begin(self, args: Args, kwargs: Kwargs) -> Start:
        wrapper = args[0]
        agent = kwargs.get("agent")
        messages = kwargs.get("messages")
        inputs = {"messages": len(messages) if isinstance(messages, list) else None,
                  "last_message": last_of(messages)}
        return Start(agent_name=name_of(agent), inputs=inputs, fallback_agent=agent,
                     state=(wrapper, _usage_marks(wrapper)))

    def end(self, response: Any, start: Start) -> End:
        wrapper, (actual_before, total_before) = start.state
        actual_after, total_after = _usage_marks(wrapper)
        # A cache hit adds to the total usage summary but not to the actual one.
        cache_hit = total_after != total_before and actual_after == actual_before
        usage = _field(response, "usage")
        prompt = _int(_field(usage, "prompt_tokens"))
        completion = _int(_field(usage, "completion_tokens"))
        total = _int(_field(usage, "total_tokens"))
        if total is None and prompt is not None:
            total = prompt + (completion or 0)
        cost = _field(response, "cost")
        cost = float(cost) if isinstance(cost, (int, float)) else None
        model = _field(response, "model")
        message, finish_reason = _first_choice(response)
        tool_calls = _tool_calls(message)
        for call in tool_calls:
            if isinstance(call["id"], str) and start.agent_name:
                self.origins.remember(call["id"], start.agent_name)
        meta = {"model": model, "prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": total, "cost": cost, "cache_hit": cache_hit,
                "finish_reason": finish_reason}
        outputs = {"content": _field(message, "content"), "tool_calls": tool_calls or None}
        billed = 0.0 if cache_hit and cost is not None else cost  # a cache hit costs nothing
        return End(outputs=outputs, meta=meta,
                   cost={"model": model, "agent_name": start.agent_name, "prompt_tokens": prompt,
                         "completion_tokens": completion, "total_tokens": total,
                         "cost_usd": billed})


def _field(obj: Any, key: str) -> Any:
    """``obj[key]`` or ``obj.key``: clients return OpenAI objects, namespaces or dicts."""
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) else None


def _usage_marks(wrapper: Any) -> tuple[Any, Any]:
    """A fingerprint of the wrapper's actual and total usage summaries."""
    return (_summary_mark(getattr(wrapper, "actual_usage_summary", None)),
            _summary_mark(getattr(wrapper, "total_usage_summary", None)))


def _summary_mark(summary: Any) -> Any:
    if not isinstance(summary, dict):
        return None
    tokens = sum(v.get("total_tokens", 0) or 0 for v in summary.values() if isinstance(v, dict))
    return summary.get("total_cost"), tokens


def _first_choice(response: Any) -> tuple[Any, Any]:
    choices = _field(response, "choices")
    if not choices:
        return None, None
    return _field(choices[0], "message"), _field(choices[0], "finish_reason")


def _tool_calls(message: Any) -> list[dict[str, Any]]:
    calls = []
    for call in _field(message, "tool_calls") or ():
        function = _field(call, "function")
        calls.append({"id": _field(call, "id"), "name": _field(function, "name"),
                      "arguments": _field(function, "arguments")})
    return calls


class Conversation(Activity):
    """``initiate_chat`` / ``a_initiate_chat``: one chat, nested in whatever started it."""

    event_type = "conversation"

    def begin(self, args: Args, kwargs: Kwargs) -> Start:
        initiator = args[0]
        recipient = arg(args, kwargs, 1, "recipient")
        summary_method = kwargs.get("summary_method")
        meta = agent_meta(recipient)
        meta.update(initiator_class=type(initiator).__name__, max_turns=kwargs.get("max_turns"),
                    summary_method=summary_method if isinstance(summary_method, str)
                    else getattr(summary_method, "__name__", None))
        if role_of(initiator):
            meta["internal"] = True
        inputs = {"initiator": name_of(initiator), "recipient": name_of(recipient),
                  "message": text(kwargs.get("message"))}
        return Start(agent_name=name_of(initiator), inputs=inputs, meta=meta)

    def end(self, result: Any, start: Start) -> End:
        history = getattr(result, "chat_history", None)
        return End(outputs={"summary": text(getattr(result, "summary", None)),
                            "chat_id": getattr(result, "chat_id", None),
                            "messages": len(history) if isinstance(history, list) else None})


class HumanInput(Activity):
    """``get_human_input`` / ``a_get_human_input``: one prompt and the human's answer."""

    event_type = "human_input"

    def begin(self, args: Args, kwargs: Kwargs) -> Start:
        agent = args[0]
        return Start(agent_name=name_of(agent), inputs={"prompt": arg(args, kwargs, 1, "prompt")},
                     fallback_agent=agent)

    def end(self, result: Any, start: Start) -> End:
        return End(outputs={"reply": text(result)})
