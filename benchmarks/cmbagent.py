"""Part 9: a real CMBAgent step offline, capture off / flat / structured.

Runs in a Python 3.12 virtualenv with the released CMBAgent (``cmbagent-update``; see
docs/benchmarks.md). The step is CMBAgent's real ``one_shot``: a fresh ``CMBAgent()`` and one
``solve`` in which its engineer writes code, its executor runs it in a subprocess, its control
agent records the step and its terminator ends it, against the scripted OpenAI client of
``tests/helpers/cmbagent_script.py`` (no network time hides the overhead). Each round runs the
step once per variant, in a rotating order, into a running collector:

- ``off``: nothing recorded;
- ``flat``: the AG2 capture only (what an unrecognised CMBAgent gets);
- ``structured``: the AG2 capture and the CMBAgent-aware hooks (run with its task, control
  phase, step, attempt, sub-agents under the step).

CMBAgent's hooks cannot be removed once installed: they stay in every variant and record only
in ``structured`` (elsewhere each is a call that returns at once, a few per step).

Two figures per step: the wall time, and the CPU time of this process (all its threads, the
sender's included; not the executor's subprocess). On a shared machine the wall time of a
several-second step moves with the other processes' load far more than the capture's cost, so
the goal is read on the CPU time.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from typing import Any

from .harness import Bench, collector, rotated
from .report import Result
from .stats import Summary, ratios

GOAL = 1.02  # the structure adds nothing measurable: within the noise of a step
VARIANTS = ("off", "flat", "structured")


class Switch:
    """The tracker the CMBAgent hooks record into: the live one while ``on``, else a disabled
    one (so the hooks, installed once, record only in the structured variant)."""

    def __init__(self, tracker: Any) -> None:
        from agent_shim.tracker import DisabledTracker

        self.on = True
        self._live = tracker
        self._off = DisabledTracker()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._live if self.on else self._off, name)


def step(work_dir: str) -> tuple[float, float]:
    """One ``one_shot`` step: its wall and CPU seconds; CMBAgent's console output goes to
    /dev/null."""
    import cmbagent

    from tests.helpers.cmbagent_script import scripted_openai

    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), \
            scripted_openai():
        wall, cpu = time.perf_counter(), time.process_time()
        cmbagent.one_shot("Compute the toy quantity", work_dir=work_dir,
                          api_keys={"OPENAI": "offline"})
        return time.perf_counter() - wall, time.process_time() - cpu


def run(bench: Bench) -> list[Result]:
    import cmbagent

    import agent_shim.ag2 as capture
    from agent_shim import cmbagent_capture
    from agent_shim.sender import Sender
    from agent_shim.tracker import Tracker

    capture.uninstall()  # a CMBAGENT_COLLECTOR_URL in our own environment must not hook AG2
    rounds = bench.scale(7, 3)
    os.chdir(tempfile.mkdtemp(prefix="cmbagent-", dir=bench.scratch))  # AG2's cache: fresh
    with collector(bench, bench.database("cmbagent")) as process:
        tracker = Tracker(bench.settings(process.url), Sender(bench.settings(process.url)))
        switch = Switch(tracker)
        if cmbagent_capture.install(cmbagent, switch) != "released":
            raise RuntimeError("part 9 needs the released CMBAgent (cmbagent-update)")

        def use(variant: str) -> None:
            switch.on = variant == "structured"
            if variant == "off":
                capture.uninstall()
            else:
                capture.install(tracker)

        wall: dict[str, list[float]] = {v: [] for v in VARIANTS}
        cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for round_number in range(-1, rounds):  # round -1 warms up: imports, caches
            for variant in rotated(list(VARIANTS), max(round_number, 0)):
                use(variant)
                took = step(tempfile.mkdtemp(prefix="step-", dir=bench.scratch))
                if round_number >= 0:
                    wall[variant].append(took[0])
                    cpu[variant].append(took[1])
        capture.uninstall()
        delivered = tracker.flush(30)
        tracker.shutdown(5)
    note = "" if delivered else "not everything was delivered"
    results = []
    for kind, seconds in (("CPU", cpu), ("wall", wall)):
        results.append(Result("9 cmbagent", f"one_shot step, {kind}: capture off",
                              Summary.of(seconds["off"]).format(" s")))
        for variant, baseline in (("flat", "off"), ("structured", "off"),
                                  ("structured", "flat")):
            ratio = ratios(seconds[variant], seconds[baseline])
            goal = kind == "CPU" and baseline == "flat"
            results.append(Result(
                "9 cmbagent", f"{kind}: {variant} / {baseline}",
                Summary.of(seconds[variant]).format(" s"),
                f"{baseline} {Summary.of(seconds[baseline]).format(' s')}", ratio,
                f"≤ {GOAL}" if goal else "-", ratio.median <= GOAL if goal else None,
                note=note if goal else ""))
    return results
