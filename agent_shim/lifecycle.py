"""How the end of a process reaches its tracker, so that what is undelivered is spooled, not lost.

- A normal exit: ``atexit``.
- A child of ``multiprocessing`` (fork start method) leaves through ``os._exit``, which skips
  ``atexit``, and clears the finalizers it inherited or got from ``os.register_at_fork`` hooks.
  So the parent, just before forking, registers a ``multiprocessing`` after-fork hook (those run
  after the clearing), which gives the child a ``multiprocessing`` finalizer that shuts the
  tracker down (``Process`` ending, ``Pool.close``/``join``).
- Such a child stopped by SIGTERM (``Process.terminate``, ``Pool.terminate``, leaving
  ``with Pool(...)``): unless the program handles SIGTERM itself, the child shuts its tracker
  down (within the exit timeout), then dies of the signal as it would have.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import weakref
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .tracker import Tracker

_hooked: weakref.WeakSet[Tracker] = weakref.WeakSet()


def watch(tracker: Tracker) -> None:
    """Shut ``tracker`` down when this process exits normally."""
    atexit.register(tracker.shutdown)


def before_fork(tracker: Tracker) -> None:
    """In the parent, before a fork: have ``multiprocessing`` children shut ``tracker`` down."""
    if tracker in _hooked or "multiprocessing.util" not in sys.modules:
        return
    from multiprocessing.util import register_after_fork

    register_after_fork(tracker, _in_multiprocessing_child)
    _hooked.add(tracker)


def _in_multiprocessing_child(tracker: Tracker) -> None:
    from multiprocessing.util import Finalize

    Finalize(None, tracker.shutdown, exitpriority=0)
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return  # the program's own handler decides

    def shut_down_then_die(signum: int, frame: FrameType | None) -> None:
        signal.signal(signum, signal.SIG_DFL)
        # On a thread of its own: this one may have been interrupted holding a lock it needs.
        closer = threading.Thread(target=tracker.shutdown, name="cmbagent-tracking-sigterm")
        closer.start()
        closer.join(tracker.settings.exit_timeout + 1.0)
        os.kill(os.getpid(), signum)

    try:
        signal.signal(signal.SIGTERM, shut_down_then_die)
    except ValueError:  # forked from a thread that is not the main one: no handler possible
        pass
