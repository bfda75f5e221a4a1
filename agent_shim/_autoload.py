"""Started by ``cmbagent_tracking.pth`` at interpreter start, only when CMBAGENT_COLLECTOR_URL is set.

It must cost next to nothing and never raise: it does not import AG2. If ``autogen`` is already
imported it installs the hooks now; otherwise a meta-path finder waits for the first
``import autogen`` (whichever distribution provides it) and installs them right after that
module has executed.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Any, Sequence

TARGET = "autogen"


def _install() -> None:
    try:
        from agent_shim.ag2 import install

        install()
    except Exception:  # the program must run on whatever happens here
        pass


class _InstallAfterExec(importlib.abc.Loader):
    """Delegates to the real loader, then installs the hooks."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _install()

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package, ...
        return getattr(self._loader, name)


class AutogenWatcher(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the loader of ``autogen`` the first time it is imported."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != TARGET:
            return None
        _remove_watcher()
        spec = None
        try:
            for finder in sys.meta_path:  # the finders that would have run without us, in order
                find = getattr(finder, "find_spec", None)
                spec = find(fullname, path, target) if find is not None else None
                if spec is not None:
                    break
        except Exception:
            return None
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _InstallAfterExec(spec.loader)
        return spec


def _remove_watcher() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, AutogenWatcher)]


def start() -> None:
    """Install now if AG2 is loaded, else when it is first imported. Never raises."""
    try:
        if TARGET in sys.modules:
            _install()
        elif not any(isinstance(f, AutogenWatcher) for f in sys.meta_path):
            sys.meta_path.insert(0, AutogenWatcher())
    except Exception:
        pass


start()
