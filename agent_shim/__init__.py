"""cmbagent-tracking's agent side: captures AG2 activity and workflow structure, never blocks.

``activate()`` returns the process's tracker. With ``CMBAGENT_COLLECTOR_URL`` unset or empty it
is a :class:`~agent_shim.tracker.DisabledTracker`: no thread, no socket, nothing patched.

Importing the package loads nothing else: the collector imports ``agent_shim.wire`` (the
protocol both sides share) without the tracker, its modules or its fork hooks.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from .config import ShimSettings
    from .disabled import DisabledTracker
    from .tracker import Tracker

    AnyTracker: TypeAlias = Tracker | DisabledTracker

__all__ = ["activate", "Tracker", "DisabledTracker", "ShimSettings"]

_tracker: AnyTracker | None = None
_lock = threading.Lock()


def activate(settings: ShimSettings | None = None) -> AnyTracker:
    """The process's tracker, created once (from the environment unless ``settings`` is given)."""
    global _tracker
    with _lock:
        if _tracker is None:
            from .config import ShimSettings

            _tracker = _create(settings or ShimSettings.from_env())
        return _tracker


def _create(settings: ShimSettings) -> AnyTracker:
    if not settings.enabled:
        from .disabled import DisabledTracker

        return DisabledTracker()
    from . import lifecycle
    from .sender import Sender
    from .tracker import Tracker

    tracker = Tracker(settings, Sender(settings))
    lifecycle.watch(tracker)
    os.register_at_fork(before=lambda: lifecycle.before_fork(tracker),
                        after_in_child=lambda: _forget_in_child(tracker))
    return tracker


def _forget_in_child(tracker: Tracker) -> None:
    # A forked child starts with a fresh sender (its own socket, queue and spool files) the
    # first time it emits; the run it was in stays current through its inherited contextvars.
    global _lock
    _lock = threading.Lock()
    tracker.after_fork()


def __getattr__(name: str) -> Any:
    """The public classes, imported when first asked for."""
    if name == "Tracker":
        from .tracker import Tracker

        return Tracker
    if name == "DisabledTracker":
        from .disabled import DisabledTracker

        return DisabledTracker
    if name == "ShimSettings":
        from .config import ShimSettings

        return ShimSettings
    raise AttributeError(f"module 'agent_shim' has no attribute {name!r}")
