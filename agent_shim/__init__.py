"""cmbagent-tracking's agent side: captures AG2 activity and workflow structure, never blocks.

``activate()`` returns the process's tracker. With ``CMBAGENT_COLLECTOR_URL`` unset or empty it
is a :class:`~agent_shim.tracker.DisabledTracker`: no thread, no socket, nothing patched.
"""

from __future__ import annotations

import os
import threading
from typing import Union

from . import lifecycle
from .config import ShimSettings
from .tracker import DisabledTracker, Tracker

__all__ = ["activate", "Tracker", "DisabledTracker", "ShimSettings"]

AnyTracker = Union[Tracker, DisabledTracker]

_tracker: AnyTracker | None = None
_lock = threading.Lock()


def activate(settings: ShimSettings | None = None) -> AnyTracker:
    """The process's tracker, created once (from the environment unless ``settings`` is given)."""
    global _tracker
    with _lock:
        if _tracker is None:
            _tracker = _create(settings or ShimSettings.from_env())
        return _tracker


def _create(settings: ShimSettings) -> AnyTracker:
    if not settings.enabled:
        return DisabledTracker()
    from .sender import Sender

    tracker = Tracker(settings, Sender(settings))
    lifecycle.watch(tracker)
    return tracker


def _before_fork() -> None:
    if isinstance(_tracker, Tracker):
        lifecycle.before_fork(_tracker)


def _forget_in_child() -> None:
    # A forked child starts with a fresh sender (its own socket, queue and spool files) the
    # first time it emits; the run it was in stays current through its inherited contextvars.
    global _lock
    _lock = threading.Lock()
    if isinstance(_tracker, Tracker):
        _tracker.after_fork()


os.register_at_fork(before=_before_fork, after_in_child=_forget_in_child)
