"""The real CMBAgent (released or the fork) run offline: a scripted model at the OpenAI client
level and a scripted human for the fork's approvals.

``openai``'s ``Completions.create`` is replaced: each request is answered as the CMBAgent agent
that sent it expects (the agent is known by its system message), and every answer is written
to :data:`LEDGER` with its made-up but consistent usage and its price. The plan has three
steps; step 2's first code fails (its executor reports the failure, the engineer fixes it).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from openai.resources.chat.completions import Completions
from openai.types.chat import ChatCompletion

#: USD per million tokens (input, output), as OpenAI publishes them, for CMBAgent's models.
PRICES = {"gpt-4.1-2025-04-14": (2.0, 8.0), "o3-mini-2025-01-31": (1.1, 4.4),
          "gpt-4o-2024-11-20": (2.5, 10.0)}
STEPS = 3
FAILING_STEP = 2
PLAN = [f"Compute quantity {n} of the task" for n in range(1, STEPS + 1)]
#: The plan as CMBAgent's planner formatter writes it (``PlannerResponse.format``).
PLAN_TEXT = "**PLAN**\n" + "".join(
    f"\n- Step {n}:\n\t* sub-task: {goal}\n\t* agent in charge: engineer\n"
    for n, goal in enumerate(PLAN, 1))


@dataclass
class Ledger:
    """What the scripted model answered: one ``(agent, model, prompt, completion, cost)`` per
    call."""

    calls: list[tuple[str, str, int, int, float]] = field(default_factory=list)

    def tokens(self) -> tuple[int, int]:
        return sum(c[2] for c in self.calls), sum(c[3] for c in self.calls)

    def cost(self) -> float:
        return sum(c[4] for c in self.calls)

    def agents(self) -> set[str]:
        return {c[0] for c in self.calls}


LEDGER = Ledger()


def _tool(name: str, **arguments: Any) -> dict[str, Any]:
    return {"tool": name, "arguments": arguments}


def _text(messages: list[dict[str, Any]]) -> str:
    return "\n".join(str(m.get("content") or "") for m in messages)


def _step(messages: list[dict[str, Any]]) -> int:
    """The plan step the conversation is at, from CMBAgent's own status messages."""
    found = re.findall(r"(?:Step number:\*\*|Plan step number:)\s*(\d+)", _text(messages))
    return int(found[-1]) if found else 1


def _last_code(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        code = re.findall(r"```python\n(.*?)```", str(message.get("content") or ""), re.S)
        if code:
            return str(code[-1])
    raise AssertionError("the engineer's code is not in the formatter's messages")


def _engineer(messages: list[dict[str, Any]]) -> str:
    step = _step(messages)
    fixing = "Fix suggestion" in _text(messages[-3:])
    body = (f"raise ValueError('step {step}: wrong units')"
            if step == FAILING_STEP and not fixing else f"print('step {step} result:', {step} * 7)")
    return (f"**Code Explanation:**\n\nComputes step {step}.\n\n**Python Code:**\n\n"
            f"```python\n{body}\n```\n")


def _engineer_formatter(messages: list[dict[str, Any]]) -> str:
    step = _step(messages)
    return json.dumps({"filename": f"step_{step}", "relative_path": None,
                       "code_explanation": f"Computes step {step}.",
                       "modification_summary": None, "python_code": _last_code(messages)})


def _executor_formatter(messages: list[dict[str, Any]]) -> dict[str, Any]:
    failed = "exitcode: 1" in _text(messages[-2:]) or "Traceback" in _text(messages[-2:])
    if failed:
        return _tool("post_execution_transfer", next_agent_suggestion="engineer",
                     execution_status="failure", fix_suggestion="Use consistent units.")
    return _tool("post_execution_transfer", next_agent_suggestion="control",
                 execution_status="success")


def _control(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """Records the step in progress, completed after a successful execution, then the next
    step in progress (CMBAgent's carryover mode hands that to the terminator)."""
    step, last = _step(messages), _text(messages[-1:])
    status = "in progress"
    if "Execution status: success" in last:
        status = "completed"
    elif "**Status:** completed" in last:
        step += 1
    return _tool("record_status", current_status=status, current_plan_step_number=step,
                 current_sub_task=PLAN[step - 1],
                 current_instructions=f"Write code for: {PLAN[step - 1]}",
                 agent_for_sub_task="engineer")


#: Each agent, by a phrase of its system message, and its answer to the messages it sees.
AGENTS: dict[str, tuple[str, Callable[[list[dict[str, Any]]], Any]]] = {
    "You are the plan setter agent": (
        "plan_setter", lambda m: _tool("record_plan_constraints", needed_agents=["engineer"])),
    "You are the planner agent": (
        "planner", lambda m: "**PLAN**\n" + "\n".join(
            f"- Step {n}: {goal} (engineer)" for n, goal in enumerate(PLAN, 1))),
    "structure the response provided by the planner": (
        "planner_response_formatter", lambda m: json.dumps({"sub_tasks": [
            {"sub_task": goal, "sub_task_agent": "engineer", "bullet_points": [goal]}
            for goal in PLAN]})),
    "You must call your tool record_plan": (
        "plan_recorder", lambda m: _tool("record_plan", plan_suggestion=PLAN_TEXT,
                                         number_of_steps_in_plan=STEPS)),
    "You are a plan reviewer": ("plan_reviewer", lambda m: "Recommendations: keep units."),
    "format the response provided by the plan_reviewer": (
        "reviewer_response_formatter", lambda m: json.dumps({"recommendations": ["Keep units."]})),
    "You must call your tool record_review": (
        "review_recorder", lambda m: _tool("record_review", plan_review="Keep units.")),
    "You are the control agent": ("control", _control),
    "You are the control_starter agent": (
        "control_starter", lambda m: _tool("record_status_starter")),
    "You are the engineer agent": ("engineer", _engineer),
    "format the response provided by the engineer": (
        "engineer_response_formatter", _engineer_formatter),
    "You call your tool post_execution_transfer": (
        "executor_response_formatter", _executor_formatter),
    "Terminate the session": ("terminator", lambda m: _tool("terminate_session")),
}


def _agent(messages: list[dict[str, Any]]) -> tuple[str, Callable[[list[dict[str, Any]]], Any]]:
    system = str(messages[0].get("content") or "") if messages else ""
    for phrase, agent in AGENTS.items():
        if phrase in system:
            return agent
    raise AssertionError(f"the script has no answer for the agent whose system message is "
                         f"{system[:200]!r}")


def answer(**request: Any) -> ChatCompletion:
    """The scripted answer to one ``chat.completions.create`` request."""
    messages = list(request.get("messages") or [])
    name, respond = _agent(messages)
    reply = respond(messages)
    model = str(request["model"])
    prompt = 50 + 10 * len(messages)
    completion = 5 + len(json.dumps(reply)) // 4
    price_in, price_out = PRICES[model]
    LEDGER.calls.append((name, model, prompt, completion,
                         (prompt * price_in + completion * price_out) / 1e6))
    message: dict[str, Any] = {"role": "assistant", "content": reply}
    if isinstance(reply, dict):
        offered = {t["function"]["name"] for t in request.get("tools") or []}
        tool = reply["tool"] if reply["tool"] in offered else next(  # the fork adds _closure
            o for o in sorted(offered) if o.startswith(reply["tool"]))
        message = {"role": "assistant", "content": None, "tool_calls": [{
            "id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
            "function": {"name": tool, "arguments": json.dumps(reply["arguments"])}}]}
    return ChatCompletion.model_validate({
        "id": f"scripted-{uuid.uuid4().hex}", "object": "chat.completion",
        "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": message,
                     "finish_reason": "tool_calls" if isinstance(reply, dict) else "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion}})


@contextmanager
def scripted_openai() -> Iterator[Ledger]:
    """Every OpenAI chat completion in the block is scripted; yields the emptied ledger."""
    original = Completions.create
    LEDGER.calls.clear()
    Completions.create = lambda self, *args, **kwargs: answer(**kwargs)  # type: ignore[method-assign]
    try:
        yield LEDGER
    finally:
        Completions.create = original  # type: ignore[method-assign]


class ScriptedHuman:
    """The fork's approval manager: answers each request from a script of ``(resolution,
    feedback)``, in order."""

    def __init__(self, *answers: tuple[str, str | None]) -> None:
        self.answers = list(answers)

    def create_approval_request(self, **request: Any) -> SimpleNamespace:
        return SimpleNamespace(id=uuid.uuid4(), **request)

    async def wait_for_approval_async(self, request_id: Any, *args: Any,
                                      **kwargs: Any) -> SimpleNamespace:
        resolution, feedback = self.answers.pop(0)
        return SimpleNamespace(resolution=resolution, user_feedback=feedback, modifications=None)
