"""The tracker: the recorder (:mod:`agent_shim.recorder`) with workflow runs
(:mod:`agent_shim.workflow`), what :func:`agent_shim.activate` returns with capture on.

The types of its API are importable from here too, with :class:`DisabledTracker` (capture off).
"""

from __future__ import annotations

from typing import Any

from .config import ShimSettings
from .disabled import DisabledTracker
from .recorder import Recorder, Sink, SpanScope
from .records import Span
from .workflow import Graphs, RunScope

__all__ = ["Tracker", "DisabledTracker", "Sink", "Span", "SpanScope"]


class Tracker(Recorder):
    """The process's tracker (see :func:`agent_shim.activate`)."""

    def __init__(self, settings: ShimSettings, sink: Sink) -> None:
        super().__init__(settings, sink)
        #: The workflow graphs of this tracker's runs (``tracker.run``, the CMBAgent adapter).
        self.graphs = Graphs(self)

    def run(self, task: str | None = None, **meta: Any) -> RunScope:
        """``with``/``async with`` one workflow run (one session, one run; see ``workflow``)."""
        return RunScope(self.graphs, task, meta)

    def shutdown(self, timeout: float | None = None) -> bool:
        """Close the implicit run (the workflow nodes still open in it, then the run and the
        session it opened), deliver what is pending within ``timeout``, spool the rest."""
        run = self.process_run
        if run is not None:
            self.graphs.close(run, "completed")
        return super().shutdown(timeout)
