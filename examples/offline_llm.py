"""A scripted model client for AG2: real agents, offline, no key.

Every reply an agent's LLM would give is taken, in order, from the agent's script: a string is a
text reply, a list of :func:`call` is a tool-call reply, an exception is raised. Agents without
a script of their own (AG2's internal speaker selectors) answer from :data:`SELECTOR`. The calls
go through AG2's ``OpenAIWrapper.create``, so usage, cost and every hook behave as with a real
model; :data:`USAGE` sums what the model reported. Used by the example and the capture tests.
"""

from __future__ import annotations

import inspect
import json
import uuid
from collections import deque
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from autogen import ConversableAgent, OpenAIWrapper

#: CMBAgent's fork of AG2 renames ``model_client_cls`` to ``mod_client_cls``.
CLIENT_KEY = ("mod_client_cls" if "mod_client_cls"
              in inspect.signature(OpenAIWrapper.register_model_client).parameters
              else "model_client_cls")
MODEL = "scripted-model"


@dataclass
class Usage:
    """What the scripted model reported."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost: float = 0.0

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


USAGE = Usage()
#: Answers for agents without a script (LLM speaker selection builds throwaway agents).
SELECTOR: deque[Any] = deque()


def call(tool: str, /, **arguments: Any) -> dict[str, Any]:
    """A scripted tool call; a name ending in ``*`` matches the first offered tool by prefix."""
    return {"name": tool, "arguments": arguments}


def llm_config(api_key: str = "offline") -> dict[str, Any]:
    return {"config_list": [{"model": MODEL, CLIENT_KEY: "ScriptedClient", "api_key": api_key}],
            "cache_seed": None}


class ScriptedClient:
    """An AG2 ``ModelClient`` answering from a script, with made-up but consistent usage."""

    def __init__(self, config: dict[str, Any], script: deque[Any] | None = None, **_: Any) -> None:
        self.model = config.get("model", MODEL)
        self.script = script if script is not None else SELECTOR

    def create(self, params: dict[str, Any]) -> SimpleNamespace:
        if not self.script:
            raise RuntimeError("the scripted model has no reply left for this agent")
        turn = self.script.popleft()
        if isinstance(turn, BaseException):
            raise turn
        offered = [t.get("function", {}).get("name", "") for t in params.get("tools") or []]
        content, tool_calls = turn, None
        if isinstance(turn, list):
            content = None
            tool_calls = [{"id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
                           "function": {"name": _resolve(c["name"], offered),
                                        "arguments": json.dumps(c["arguments"])}} for c in turn]
        prompt = 10 * len(params.get("messages") or []) + 7
        completion = 3 + len(json.dumps(turn)) // 4
        cost = round(prompt * 1e-5 + completion * 3e-5, 10)
        USAGE.calls += 1
        USAGE.prompt_tokens += prompt
        USAGE.completion_tokens += completion
        USAGE.total_tokens += prompt + completion
        USAGE.cost += cost
        message = SimpleNamespace(role="assistant", content=content, tool_calls=tool_calls,
                                  function_call=None)
        return SimpleNamespace(
            id=f"scripted-{uuid.uuid4().hex}", model=self.model, cost=cost,
            choices=[SimpleNamespace(message=message,
                                     finish_reason="tool_calls" if tool_calls else "stop")],
            usage=SimpleNamespace(prompt_tokens=prompt, completion_tokens=completion,
                                  total_tokens=prompt + completion),
            message_retrieval_function=None)

    def message_retrieval(self, response: SimpleNamespace) -> list[Any]:
        message = response.choices[0].message
        if message.tool_calls:
            return [{"role": "assistant", "content": None, "tool_calls": message.tool_calls}]
        return [message.content]

    def cost(self, response: SimpleNamespace) -> float:
        return float(response.cost)

    @staticmethod
    def get_usage(response: SimpleNamespace) -> dict[str, Any]:
        usage = response.usage
        return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens, "cost": response.cost, "model": response.model}


def _resolve(name: str, offered: list[str]) -> str:
    if not name.endswith("*"):
        return name
    return next(o for o in offered if o.startswith(name[:-1]))


class ScriptedAgent(ConversableAgent):
    """A ``ConversableAgent`` whose LLM is ``script``.

    AG2 rebuilds ``agent.client`` whenever the agent's tools change (every turn of a group
    chat with handoffs), and a rebuilt client forgets registered model clients, so the script
    is registered again on every rebuild.
    """

    #: The key written into the default ``llm_config`` (the capture tests plant a secret here).
    api_key = "offline"

    def __init__(self, name: str, script: list[Any] | None = None, **kwargs: Any) -> None:
        self.script = deque(script or [])
        kwargs.setdefault("llm_config", llm_config(self.api_key))
        kwargs.setdefault("human_input_mode", "NEVER")
        super().__init__(name, **kwargs)

    @property
    def client(self) -> Any:
        return self.__dict__.get("_scripted_client")

    @client.setter
    def client(self, wrapper: Any) -> None:
        self.__dict__["_scripted_client"] = wrapper
        if wrapper is not None and any(type(c).__name__ == "PlaceHolderClient"
                                       for c in getattr(wrapper, "_clients", ())):
            wrapper.register_model_client(ScriptedClient, script=self.script)
