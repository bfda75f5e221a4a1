"""A scripted model client for AG2, so the examples run offline with real agents.

Every reply an agent's LLM would give is taken, in order, from the agent's script: a string is
a text reply, a list of :func:`call` is a tool-call reply. The calls still go through AG2's
``OpenAIWrapper.create``, so usage, cost and every hook behave as with a real model; no network,
no key.

(The AG2 capture tests carry a fuller version with speaker-selection scripts:
``tests/ag2/scenarios.py``.)
"""

from __future__ import annotations

import inspect
import json
import uuid
from collections import deque
from types import SimpleNamespace
from typing import Any

from autogen import ConversableAgent, OpenAIWrapper

#: CMBAgent's fork of AG2 renames ``model_client_cls`` to ``mod_client_cls``.
CLIENT_KEY = ("mod_client_cls" if "mod_client_cls"
              in inspect.signature(OpenAIWrapper.register_model_client).parameters
              else "model_client_cls")
MODEL = "scripted-model"


def call(tool: str, **arguments: Any) -> dict[str, Any]:
    """One tool call in a script."""
    return {"name": tool, "arguments": arguments}


def llm_config() -> dict[str, Any]:
    return {"config_list": [{"model": MODEL, CLIENT_KEY: "ScriptedClient", "api_key": "offline"}],
            "cache_seed": None}


class ScriptedClient:
    """An AG2 ``ModelClient`` answering from a script, with made-up but consistent usage."""

    def __init__(self, config: dict[str, Any], script: deque[Any], **_: Any) -> None:
        self.model = config.get("model", MODEL)
        self.script = script

    def create(self, params: dict[str, Any]) -> SimpleNamespace:
        if not self.script:
            raise RuntimeError("the scripted model has no reply left for this agent")
        turn = self.script.popleft()
        tool_calls = None
        content = turn
        if isinstance(turn, list):
            content = None
            tool_calls = [{"id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
                           "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}}
                          for c in turn]
        prompt = 40 * len(params.get("messages") or []) + 25
        completion = 5 + len(json.dumps(turn)) // 4
        message = SimpleNamespace(role="assistant", content=content, tool_calls=tool_calls,
                                  function_call=None)
        return SimpleNamespace(
            id=f"scripted-{uuid.uuid4().hex}", model=self.model,
            cost=round(prompt * 2.5e-6 + completion * 1e-5, 10),
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


class ScriptedAgent(ConversableAgent):
    """A ``ConversableAgent`` whose LLM is ``script``.

    AG2 rebuilds ``agent.client`` whenever the agent's tools change (every turn of a group
    chat with handoffs), and a rebuilt client forgets registered model clients, so the script
    is registered again on every rebuild.
    """

    def __init__(self, name: str, script: list[Any], **kwargs: Any) -> None:
        self.script = deque(script)
        kwargs.setdefault("llm_config", llm_config())
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
