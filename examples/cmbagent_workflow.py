"""A CMBAgent-shaped workflow, offline, recorded as one run with its full tree.

    cmbagent-collector serve &                      # a collector (embedded PostgreSQL by default)
    CMBAGENT_COLLECTOR_URL=tcp://127.0.0.1:5555 python examples/cmbagent_workflow.py
    cmbagent-collector tree <the run id it prints>

What happens, as in CMBAgent's planning-and-control mode: a planning phase (planner and plan
reviewer), then a control phase with one step per plan item. Each step, and each attempt at a
step, builds a fresh group of real AG2 agents (engineer writes code, executor runs it, a
researcher uses a tool, control closes). Step 3's code fails twice, so the step fails; a human
reviewer gives a hypothesis, the step is redone on a branch, and the retry succeeds.

The workflow calls the tracking adapter exactly where CMBAgent calls its ``WorkflowCallbacks``,
plus ``create_redo_branch`` for the redo. The model is scripted (``offline_llm.py``): no
network, no key. AG2's activity is captured with no code here: the package's start-up hook
installs the capture when ``autogen`` is imported with CMBAGENT_COLLECTOR_URL set.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # offline_llm.py

from autogen import ConversableAgent, UserProxyAgent, gather_usage_summary  # noqa: E402
from autogen.agentchat import initiate_group_chat  # noqa: E402
from autogen.agentchat.group import AgentTarget, TerminateTarget  # noqa: E402
from autogen.agentchat.group.patterns import DefaultPattern  # noqa: E402
from autogen.coding import LocalCommandLineCodeExecutor  # noqa: E402
from offline_llm import ScriptedAgent, call  # noqa: E402

import agent_shim  # noqa: E402
from agent_shim.cmbagent import tracking_callbacks  # noqa: E402

TASK = "Estimate the Hubble constant from a mock supernova sample"
MAX_ATTEMPTS = 2


# --- CMBAgent's callback arguments (cmbagent/callbacks.py), as plain dataclasses ------------


@dataclass
class StepInfo:
    step_number: int
    goal: str
    description: str
    status: str = "pending"
    started_at: float | None = None
    completed_at: float | None = None
    execution_time: float | None = None
    error: str | None = None
    result: dict[str, Any] | None = None
    summary: str | None = None


@dataclass
class PlanInfo:
    task: str
    num_steps: int
    steps: list[dict[str, Any]]
    plan_text: str
    planning_time: float


PLAN = [
    {"sub_task": "Generate a mock supernova sample", "sub_task_agent": "engineer"},
    {"sub_task": "Look up the fiducial matter density", "sub_task_agent": "researcher"},
    {"sub_task": "Fit H0 to the sample", "sub_task_agent": "engineer"},
    {"sub_task": "Summarise the result", "sub_task_agent": "researcher"},
]


# --- the agents each step builds afresh --------------------------------------------------------


def python(code: str) -> str:
    return f"```python\n{code}\n```"


#: What the engineer writes per step; step 3's first attempts use a prior that has no support.
CODE = {
    1: python("import random\nrandom.seed(1)\nz = [0.01 * i for i in range(1, 30)]\n"
              "print(f'{len(z)} supernovae, z up to {max(z):.2f}')"),
    3: python("prior = (80, 60)  # lower bound above the upper bound\n"
              "assert prior[0] < prior[1], 'empty prior range for H0'"),
    "3-redo": python("prior = (50, 90)\nh0 = 70.2\nprint(f'H0 = {h0} km/s/Mpc')"),
    4: python("print('H0 = 70.2 +/- 1.4 km/s/Mpc with Omega_m = 0.315')"),
}


def fiducial_parameter(name: str) -> str:
    """Return a fiducial Planck 2018 cosmological parameter."""
    return {"Omega_m": "0.315", "H0": "67.4"}.get(name, "unknown")


def run_agents(step: int, goal: str, code_key: Any,
               work_dir: str) -> tuple[list[Any], bool, list[Any]]:
    """One fresh agent group (a ``CMBAgent()`` in CMBAgent) working on a step.

    Returns the chat history, whether the code ran cleanly, and the agents.
    """
    executor = ConversableAgent(
        "executor", llm_config=False, human_input_mode="NEVER",
        code_execution_config={"executor": LocalCommandLineCodeExecutor(work_dir=work_dir,
                                                                        timeout=60)})
    control = ScriptedAgent("control", script=["Step done. TERMINATE"])
    if code_key in CODE:
        first = ScriptedAgent("engineer", script=[CODE[code_key]])
        first.handoffs.set_after_work(AgentTarget(executor))
        executor.handoffs.set_after_work(AgentTarget(control))
        agents = [first, executor, control]
    else:
        first = ScriptedAgent("researcher", functions=[fiducial_parameter], script=[
            [call("fiducial_parameter", name="Omega_m")], "Omega_m = 0.315 (Planck 2018)."])
        first.handoffs.set_after_work(AgentTarget(control))
        agents = [first, control]
    control.handoffs.set_after_work(TerminateTarget())
    pattern = DefaultPattern(initial_agent=first, agents=agents,
                             group_after_work=TerminateTarget())
    result, _, _ = initiate_group_chat(pattern=pattern, messages=f"Step {step}: {goal}",
                                       max_rounds=12)
    failed = any("exitcode: 1" in str(m.get("content")) for m in result.chat_history)
    return result.chat_history, not failed, agents


def report(tracking: Any, step: int, history: list[Any], agents: list[Any]) -> None:
    """What CMBAgent's control phase reports after ``solve()``: messages, code, cost."""
    for message in history:
        agent = message.get("name")
        if not agent:  # the task message the group starts from has no speaker
            continue
        content = str(message.get("content") or "")
        for language, code in re.findall(r"```(\w+)\n(.*?)```", content, re.S):
            tracking.on_code_execution(agent, code, language, None)
        tracking.on_agent_message(agent, message.get("role", "assistant"), content[:1000],
                                  {"step": step})
    usage = gather_usage_summary(agents)["usage_including_cached_inference"]
    tracking.on_cost_update({"total_cost": usage.get("total_cost", 0), "step": step,
                             "records": {k: v for k, v in usage.items() if k != "total_cost"}})


class StepFailed(RuntimeError):
    pass


class Reviewer(UserProxyAgent):
    """The human in the loop; their answer is scripted here."""

    def get_human_input(self, prompt: str, **kwargs: Any) -> str:
        answer = "The prior on H0 is empty; widen it to (50, 90) km/s/Mpc."
        print(f"{prompt}\n> {answer}")
        return answer


# --- the workflow --------------------------------------------------------------------------


def planning(tracking: Any) -> list[dict[str, Any]]:
    tracking.on_phase_change("planning", None)
    config = {"planner_model": "scripted-model", "max_plan_steps": 4, "n_plan_reviews": 1}
    tracking.on_planning_start(TASK, config)
    started = time.monotonic()
    plan_text = "\n".join(f"{i}. {s['sub_task']} ({s['sub_task_agent']})"
                          for i, s in enumerate(PLAN, 1))
    planner = ScriptedAgent("planner", script=[plan_text, "Plan final. TERMINATE"])
    reviewer = ScriptedAgent("plan_reviewer", script=["The plan covers the task. Approve."])
    reviewer.initiate_chat(planner, message=TASK, max_turns=2)
    tracking.on_cost_update({"total_cost": gather_usage_summary([planner, reviewer])
                             ["usage_including_cached_inference"].get("total_cost", 0)})
    tracking.on_planning_complete(PlanInfo(TASK, len(PLAN), PLAN, plan_text,
                                           time.monotonic() - started))
    return PLAN


def control(tracking: Any, plan: list[dict[str, Any]], work_dir: str) -> None:
    tracking.on_phase_change("control", None)
    for number, item in enumerate(plan, 1):
        tracking.on_phase_change("control", number)
        goal = item["sub_task"]
        tracking.on_step_start(StepInfo(number, goal, goal, "running", time.time()))
        try:
            attempt_step(tracking, number, goal, number, work_dir)
        except StepFailed as exc:
            tracking.on_step_failed(StepInfo(number, f"Step {number}", "", "failed",
                                             error=str(exc)))
            hypothesis = Reviewer("admin", human_input_mode="ALWAYS").get_human_input(
                f"Step {number} failed ({exc}). What should the redo change?")
            tracking.create_redo_branch(number, 1, hypothesis)
            attempt_step(tracking, number, goal, f"{number}-redo", work_dir)
        tracking.on_step_complete(StepInfo(number, goal, goal, "completed",
                                           completed_at=time.time(), summary=f"{goal}: done"))


def attempt_step(tracking: Any, number: int, goal: str, code_key: Any, work_dir: str) -> None:
    """CMBAgent's attempt loop: a fresh agent group per attempt, up to MAX_ATTEMPTS."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            with tracking.attempt():
                history, ok, agents = run_agents(number, goal, code_key, work_dir)
                report(tracking, number, history, agents)
                if not ok:
                    raise StepFailed(f"the code of step {number} exited with an error")
            return
        except StepFailed:
            if attempt == MAX_ATTEMPTS:
                raise


def main() -> int:
    if not os.environ.get("CMBAGENT_COLLECTOR_URL"):
        print("Set CMBAGENT_COLLECTOR_URL to a running collector, for example:\n"
              "  cmbagent-collector serve &\n"
              "  CMBAGENT_COLLECTOR_URL=tcp://127.0.0.1:5555 python examples/cmbagent_workflow.py",
              file=sys.stderr)
        return 2
    tracker = agent_shim.activate()
    tracking = tracking_callbacks(tracker, max_redos=2)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cmbagent-example-") as work_dir:
        os.makedirs(os.path.join(work_dir, "chats"), exist_ok=True)
        os.chdir(work_dir)  # CMBAgent's AG2 fork writes chats/ into the working directory
        tracking.on_workflow_start(TASK, {"mode": "planning_and_control", "max_redos": 2})
        try:
            control(tracking, planning(tracking), work_dir)
        except Exception as exc:
            tracking.on_workflow_failed(f"{type(exc).__name__}: {exc}", None)
            raise
        tracking.on_workflow_complete({"task": TASK}, time.monotonic() - started)
    delivered = tracker.flush(30)
    print(f"\nrun={tracking.run_id}")
    print(f"delivered={delivered}")
    print(f"See the tree:  cmbagent-collector tree {tracking.run_id}")
    print(f"and the events: cmbagent-collector events {tracking.run_id} --node step_3")
    return 0 if delivered else 1


if __name__ == "__main__":
    sys.exit(main())
