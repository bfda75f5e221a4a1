"""Started by ``cmbagent_tracking.pth`` at interpreter start, only when CMBAGENT_COLLECTOR_URL is set.

It must cost next to nothing and never raise: it does not import AG2. For each framework it
watches (``autogen``: classic AG2, whichever distribution provides it; ``ag2`` and
``ag2.network``: AG2 1.x), if the
module is already imported it installs that capture now; otherwise a meta-path finder waits for
the first import and installs it right after the module has executed. Both can be captured in
one process, each once.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Any, Sequence

#: Watched module -> the capture package whose ``install()`` runs after it is imported
#: (``ag2.network`` is opt-in in AG2 1.x: its hubs are captured once it is imported).
TARGETS = {"autogen": "agent_shim.ag2", "ag2": "agent_shim.ag2_v1",
           "ag2.network": "agent_shim.ag2_v1"}


def _install(target: str) -> None:
    try:
        from importlib import import_module

        import_module(TARGETS[target]).install()
    except Exception:  # the program must run on whatever happens here
        pass


class _InstallAfterExec(importlib.abc.Loader):
    """Delegates to the real loader, then installs the hooks."""

    def __init__(self, loader: Any, target: str) -> None:
        self._loader = loader
        self._target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _install(self._target)

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package, ...
        return getattr(self._loader, name)


class ImportWatcher(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the loader of each watched module the first time it is
    imported, and leaves ``sys.meta_path`` once it has seen them all."""

    def __init__(self, targets: set[str]) -> None:
        self.pending = targets

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.pending:
            return None
        self.pending.discard(fullname)
        if not self.pending:
            _remove_watcher()
        spec = None
        try:
            for finder in sys.meta_path:  # the finders that would have run without us, in order
                if isinstance(finder, ImportWatcher):
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
    """Install each capture now if its framework is loaded, else when it is first imported.
    Never raises."""
    try:
        waiting = set()
        for target in TARGETS:
            if target in sys.modules:
                _install(target)
            else:
                waiting.add(target)
        if waiting and not any(isinstance(f, ImportWatcher) for f in sys.meta_path):
            sys.meta_path.insert(0, ImportWatcher(waiting))
    except Exception:
        pass


start()
