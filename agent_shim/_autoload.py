"""Started by ``cmbagent_tracking.pth`` at interpreter start, only when CMBAGENT_COLLECTOR_URL is
set.

It must cost next to nothing and never raise: it does not import AG2. For each watched module
(``autogen``: classic AG2, whichever distribution provides it; ``ag2``, ``ag2.network`` and
``ag2.live.realtime``: AG2 1.x; ``cmbagent``) it installs that capture now if the module is
already imported; otherwise a meta-path finder waits for the first import and installs it right
after the module has executed.
Classic AG2 and 1.x can both be captured in one process, each once.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any


def _install_ag2(module: ModuleType) -> None:
    from agent_shim.ag2 import install

    install()


def _install_ag2_v1(module: ModuleType) -> None:
    from agent_shim.ag2_v1 import install

    install()


def _install_cmbagent(module: ModuleType) -> None:
    from agent_shim.cmbagent_capture import install

    install(module)


#: Watched module -> what to install once it has executed (``ag2.network`` and ``ag2.live`` are
#: opt-in in AG2 1.x: their hubs and live agents are captured once they are imported).
TARGETS: dict[str, Callable[[ModuleType], None]] = {
    "autogen": _install_ag2, "ag2": _install_ag2_v1, "ag2.network": _install_ag2_v1,
    "ag2.live.realtime": _install_ag2_v1, "cmbagent": _install_cmbagent}


def _install(name: str, module: ModuleType) -> None:
    try:
        TARGETS[name](module)
    except Exception:  # the program must run on whatever happens here
        pass


class _InstallAfterExec(importlib.abc.Loader):
    """Delegates to the real loader, then installs the hooks."""

    def __init__(self, loader: importlib.abc.Loader, name: str) -> None:
        self._loader = loader
        self._name = name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _install(self._name, module)

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package, ...
        return getattr(self._loader, name)


class ImportWatcher(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the loader of each watched module the first time it is
    imported, and leaves ``sys.meta_path`` once none is left to wait for."""

    def __init__(self, waiting: set[str]) -> None:
        self.waiting = waiting

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.waiting:
            return None
        self.waiting.discard(fullname)
        if not self.waiting:
            _remove_watcher()
        spec: importlib.machinery.ModuleSpec | None = None
        try:
            for finder in sys.meta_path:  # the finders that would have run without us, in order
                if finder is self:
                    continue
                find = getattr(finder, "find_spec", None)
                spec = find(fullname, path, target) if find is not None else None
                if spec is not None:
                    break
        except Exception:
            return None
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _InstallAfterExec(spec.loader, fullname)
        return spec


def _remove_watcher() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, ImportWatcher)]


def start() -> None:
    """Install now for each watched module already loaded, else when it is first imported.
    Never raises."""
    try:
        waiting = set()
        for name in TARGETS:
            if name in sys.modules:
                _install(name, sys.modules[name])
            else:
                waiting.add(name)
        if waiting and not any(isinstance(f, ImportWatcher) for f in sys.meta_path):
            sys.meta_path.insert(0, ImportWatcher(waiting))
    except Exception:
        pass


start()
