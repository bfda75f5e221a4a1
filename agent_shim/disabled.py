"""Capture off: the tracker and the run that :func:`agent_shim.activate` hands out instead.

Every call is a no-op and every block runs as is; nothing was started to get here. A redo past
``max_redos`` still raises, so a program behaves the same with capture on or off.
"""

from __future__ import annotations

from typing import Any

from .records import Record
from .workflow import check_redo_allowed


class DisabledRun:
    """``tracker.run(...)`` with capture off: every method a no-op, every block runs as is."""

    id = None
    uuid = None

    def phase(self, name: str, **meta: Any) -> DisabledRun:
        return self

    def step(self, number: int, goal: str | None = None, **meta: Any) -> DisabledRun:
        return self

    def redo(self, step_number: int, hypothesis: str | None, *, redo_number: int | None = None,
             max_redos: int | None = None, **meta: Any) -> DisabledRun:
        if redo_number is not None:
            check_redo_allowed(step_number, redo_number, max_redos)
        return self

    def skip(self, step_number: int, goal: str | None = None, reason: str | None = None) -> None:
        return None

    def attempt(self, **meta: Any) -> DisabledRun:
        return self

    def close(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __enter__(self) -> DisabledRun:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    async def __aenter__(self) -> DisabledRun:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


DISABLED_RUN = DisabledRun()


class DisabledTracker:
    """Capture off: every call is a no-op, and nothing was started to get here."""

    enabled = False

    def scope(self) -> None:
        return None

    def event(self, event_type: str, **fields: Any) -> None:
        return None

    def start_span(self, event_type: str, **fields: Any) -> None:
        return None

    def end_span(self, span: Any, **fields: Any) -> None:
        return None

    def span(self, event_type: str, **fields: Any) -> DisabledRun:
        return DISABLED_RUN  # a no-op block whose ``id`` is None, like a disabled run

    def cost(self, **fields: Any) -> None:
        return None

    def record(self, record: Record) -> None:
        return None

    def run(self, task: str | None = None, **meta: Any) -> DisabledRun:
        return DISABLED_RUN

    def flush(self, timeout: float = 10.0) -> bool:
        return True

    def shutdown(self, timeout: float | None = None) -> bool:
        return True
