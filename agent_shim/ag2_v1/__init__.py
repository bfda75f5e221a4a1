"""Automatic capture of AG2 1.x programs (the module ``ag2``: Agent, middleware, networks).

AG2 1.x has extension points for exactly this. ``install()`` patches ``ag2.Agent.__init__`` so
that every agent constructed afterwards gets the capture middleware inserted outermost
(``Agent.insert_middleware``); it records turns, LLM calls (tokens, and a cost from
``agent_shim.ag2_v1.pricing``), tool calls and human input. It also wraps the sandbox tools'
adapters for ``code_exec`` events (``agent_shim.ag2_v1.sandbox``). If ``ag2.network`` is
imported, it also patches ``Hub.__init__`` to register a ``HubListener`` on every hub
(channels, envelopes, routing: ``agent_shim.ag2_v1.network``); if ``ag2.live`` is, it patches
``LiveAgent`` (sessions: ``agent_shim.ag2_v1.live``). With ``CMBAGENT_COLLECTOR_URL`` set,
``agent_shim._autoload`` calls ``install()`` as soon as ``ag2`` is imported, and again when
``ag2.network`` or ``ag2.live`` is. See docs/ag2-capture.md.
"""

from __future__ import annotations

import functools
import importlib
import logging
import sys
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..tracker import DisabledTracker, Tracker
    from .capture import Runtime

__all__ = ["install", "uninstall", "installed", "disabled_hooks", "unpriced"]

log = logging.getLogger(__name__)

_lock = threading.Lock()
_runtime: Runtime | None = None
#: ``(owner, attribute, original)`` of every patch, to put back in reverse order.
_patches: list[tuple[Any, str, Any]] = []


def install(tracker: Tracker | DisabledTracker | None = None) -> bool:
    """Capture AG2 1.x agents constructed from now on into ``tracker`` (default: the process's).

    Returns ``True`` if capture is in place afterwards. A second call only adds the hub
    listener or the live-agent patch if ``ag2.network`` or ``ag2.live`` has been imported
    since; a disabled tracker, or an ``ag2`` that is not 1.x, patches nothing. Never raises.
    """
    with _lock:
        if _runtime is None and not _install_agents(tracker):
            return False
        assert _runtime is not None
        for module in _OPTIONAL:
            if module in sys.modules and module not in _optional_installed:
                _install_optional(module, _runtime)
        return True


def _install_agents(tracker: Tracker | DisabledTracker | None) -> bool:
    """Patch ``Agent.__init__`` to insert the capture middleware; ``False`` if not installed."""
    global _runtime
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
                    self.insert_middleware(CaptureFactory(
                        self.name, runtime, maintains_memory(kwargs.get("knowledge"))))
                except Exception as exc:
                    runtime.disable("Agent.__init__", exc)

        from .sandbox import patch_sandbox

        sandbox_patches = patch_sandbox(runtime)
        Agent.__init__ = __init__  # type: ignore[method-assign]
    except Exception as exc:
        log.warning("cmbagent-tracking: AG2 1.x capture not installed", exc_info=exc)
        return False
    _runtime = runtime
    _patches.extend([*sandbox_patches, (Agent, "__init__", original)])
    return True


def maintains_memory(knowledge: Any) -> bool:
    """Whether an agent's ``KnowledgeConfig`` compacts or aggregates: LLM calls of AG2's own,
    outside ``on_llm_call``, whose usage only its stream reports."""
    return (getattr(knowledge, "compact", None) is not None
            or getattr(knowledge, "aggregate", None) is not None)


#: AG2 1.x modules a program imports only when it uses them (``import ag2`` does not), and
#: where the patch that captures their objects is.
_OPTIONAL = {"ag2.network": ("network", "patch_hub"), "ag2.live.realtime": ("live", "patch_live")}
_optional_installed: set[str] = set()


def _install_optional(module: str, runtime: Runtime) -> None:
    """Capture the objects of an optional AG2 module (hubs, live agents) built from now on."""
    submodule, patcher = _OPTIONAL[module]
    try:
        patch = getattr(importlib.import_module(f".{submodule}", __name__), patcher)
        _patches.extend(patch(runtime))
        _optional_installed.add(module)
    except Exception as exc:
        log.warning("cmbagent-tracking: AG2 1.x capture of %s not installed", module,
                    exc_info=exc)


def uninstall() -> bool:
    """Put every patched attribute back and stop recording (agents and hubs built meanwhile
    included). ``False`` if capture was not installed.
    """
    global _runtime
    with _lock:
        if _runtime is None:
            return False
        for owner, name, original in reversed(_patches):
            setattr(owner, name, original)
        _patches.clear()
        _optional_installed.clear()
        _runtime.enabled = False
        _runtime = None
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
