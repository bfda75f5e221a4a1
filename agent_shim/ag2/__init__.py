"""Automatic capture of AG2 (classic ``autogen`` API) activity.

``install()`` wraps AG2's classes so that every agent call, message, tool call, code execution,
speaker selection and handoff, LLM call, conversation and human input is recorded once, sync
and async, with parent links kept across AG2's thread hops. ``uninstall()`` restores AG2
exactly. With ``CMBAGENT_COLLECTOR_URL`` set, ``agent_shim._autoload`` calls ``install()`` as
soon as ``autogen`` is imported, so programs need no change. See docs/ag2-capture.md.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..tracker import DisabledTracker, Tracker
    from .installation import Installation

__all__ = ["install", "uninstall", "installed", "disabled_hooks"]

log = logging.getLogger(__name__)

_installation: Installation | None = None
_lock = threading.Lock()


def install(tracker: Tracker | DisabledTracker | None = None) -> bool:
    """Hook AG2 so its activity goes to ``tracker`` (default: ``agent_shim.activate()``).

    Returns ``True`` if hooks are in place afterwards. A second call changes nothing; a disabled
    tracker patches nothing. Never raises: a failure is logged and leaves AG2 untouched.
    """
    global _installation
    with _lock:
        if _installation is not None:
            return True
        try:
            if tracker is None:
                from .. import activate

                tracker = activate()
            if not tracker.enabled:
                return False
            from .installation import Installation

            installation = Installation(tracker)  # type: ignore[arg-type]
            try:
                installation.apply()
            except BaseException:
                installation.remove()
                raise
        except Exception as exc:
            log.warning("cmbagent-tracking: AG2 capture not installed", exc_info=exc)
            return False
        _installation = installation
        return True


def uninstall() -> bool:
    """Remove every hook and restore AG2's original attributes; ``False`` if none were in place."""
    global _installation
    with _lock:
        if _installation is None:
            return False
        _installation.remove()
        _installation = None
        return True


def installed() -> bool:
    """Whether the hooks are in place."""
    return _installation is not None


def disabled_hooks() -> list[str]:
    """The hooks switched off after an internal error since ``install()`` (for diagnostics)."""
    return list(_installation.runtime.disabled) if _installation is not None else []
