"""Automatic capture of AG2 1.x programs (the module ``ag2``: Agent, middleware, streams).

AG2 1.x has an extension point for exactly this: middleware. ``install()`` patches one method,
``ag2.Agent.__init__``, so that every agent constructed afterwards gets the capture middleware
inserted outermost (``Agent.insert_middleware``, AG2's own API); the middleware records turns,
LLM calls (tokens, and a cost from ``agent_shim.ag2_v1.pricing``), tool calls and human input.
With ``CMBAGENT_COLLECTOR_URL`` set, ``agent_shim._autoload`` calls ``install()`` as soon as
``ag2`` is imported. See docs/ag2-capture.md.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..tracker import DisabledTracker, Tracker
    from .capture import Runtime

__all__ = ["install", "uninstall", "installed", "disabled_hooks", "unpriced"]

log = logging.getLogger(__name__)

_lock = threading.Lock()
_runtime: Runtime | None = None
_original_init: Any = None


def install(tracker: Tracker | DisabledTracker | None = None) -> bool:
    """Capture AG2 1.x agents constructed from now on into ``tracker`` (default: the process's).

    Returns ``True`` if capture is in place afterwards. A second call changes nothing; a
    disabled tracker, or an ``ag2`` that is not 1.x, patches nothing. Never raises.
    """
    global _runtime, _original_init
    with _lock:
        if _runtime is not None:
            return True
        try:
            if tracker is None:
                from .. import activate

                tracker = activate()
            if not tracker.enabled:
                return False
            from ag2 import Agent

            if not hasattr(Agent, "insert_middleware"):
                return False  # not the 1.x framework
            from .capture import CaptureFactory, Runtime

            runtime = Runtime(tracker)  # type: ignore[arg-type]
            original = Agent.__init__

            @functools.wraps(original)
            def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
                original(self, *args, **kwargs)
                if runtime.enabled:
                    try:
                        self.insert_middleware(CaptureFactory(self.name, runtime))
                    except Exception as exc:
                        runtime.disable("Agent.__init__", exc)

            Agent.__init__ = __init__
        except Exception as exc:
            log.warning("cmbagent-tracking: AG2 1.x capture not installed", exc_info=exc)
            return False
        _runtime, _original_init = runtime, original
        return True


def uninstall() -> bool:
    """Put ``Agent.__init__`` back and stop recording (agents built meanwhile included).

    ``False`` if capture was not installed.
    """
    global _runtime, _original_init
    with _lock:
        if _runtime is None:
            return False
        from ag2 import Agent

        Agent.__init__ = _original_init
        _runtime.active = False
        _runtime, _original_init = None, None
        return True


def installed() -> bool:
    """Whether capture is in place."""
    return _runtime is not None


def disabled_hooks() -> list[str]:
    """Where capture switched itself off after an internal error since ``install()``."""
    return list(_runtime.disabled) if _runtime is not None else []


def unpriced() -> dict[str, int]:
    """LLM calls recorded without a cost since ``install()``, by reason and model."""
    return _runtime.prices.unpriced() if _runtime is not None else {}
