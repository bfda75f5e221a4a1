"""The workflow model: a run and, inside it, its phases, steps, sub-agent nodes and redos."""

from __future__ import annotations

from contextvars import Token
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .context import CURRENT, Scope
from .tracker import run_end_record, run_start_record
from .wire import new_id

if TYPE_CHECKING:
    from .tracker import Tracker


class RunScope:
    """One workflow run: a new session (unless one is given), a run, and its scope."""

    def __init__(self, tracker: Tracker, task: str | None, meta: dict[str, Any]) -> None:
        self.tracker = tracker
        self.task = task
        self.meta = meta
        self.id = new_id()
        self.session_id: bytes | None = None
        self._token: Token[Scope | None] | None = None

    def __enter__(self) -> RunScope:
        tracker = self.tracker
        self.session_id = tracker.settings.session_id or tracker.open_session(name=self.task)
        scope = Scope(run=self.id, session=self.session_id)
        tracker.record(run_start_record(scope, self.task, self.meta))
        self._token = CURRENT.set(scope)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._token is not None:
            CURRENT.reset(self._token)
        scope = Scope(run=self.id, session=self.session_id)
        error = f"{type(exc).__name__}: {exc}" if exc is not None else None
        self.tracker.record(run_end_record(scope, "failed" if exc else "completed", error))

    async def __aenter__(self) -> RunScope:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)
