"""Agent programs the tests run in their own processes: ``python programs.py NAME [ARGS]``.

Each prints one line per fact the test needs (``key=value``).
"""

from __future__ import annotations

import os
import sys
import time

import agent_shim


def emit(count: str, pause: str = "0", flush: str = "30") -> None:
    """Emit ``count`` events in one run (a span around them), pausing every 100."""
    tracker = agent_shim.activate()
    with tracker.run("emit", pid=os.getpid()) as run:
        print(f"run={run.id.hex()}", flush=True)
        with tracker.span("agent_call", agent_name="caller", inputs={"task": "emit"}):
            for i in range(int(count)):
                tracker.event("message", agent_name=f"agent-{os.getpid()}",
                              inputs={"i": i, "text": "ünïcødé ✓", "pid": os.getpid()},
                              meta={"n": i})
                if i % 100 == 99 and float(pause):
                    time.sleep(float(pause))
    print("emitted", flush=True)
    if float(flush):
        flushed = tracker.flush(float(flush))
        print(f"flushed={flushed}", flush=True)
        if not flushed:
            _explain(tracker)
            sys.exit(1)


def _explain(tracker: agent_shim.Tracker) -> None:
    """What the sender still holds, for a test that failed to flush."""
    sink = tracker._sink
    frames = [(f.seq, f.sent_at, f.path is not None) for f in sink._in_flight.values()]
    print(f"sender alive={sink._thread and sink._thread.is_alive()} queue={len(sink._queue)} "
          f"in_flight={frames} backlog={[f.seq for f in sink._backlog]} "
          f"requests={[(r.upto, r.done.is_set()) for r in sink._requests]} seq={sink._seq}",
          file=sys.stderr, flush=True)


def exit_now(count: str) -> None:
    """Emit and exit at once (no flush): exit waits its bound, then spools."""
    tracker = agent_shim.activate()
    with tracker.run("exit-now") as run:
        print(f"run={run.id.hex()}", flush=True)
        for i in range(int(count)):
            tracker.event("message", inputs={"i": i})
    started = time.monotonic()
    delivered = tracker.shutdown()
    print(f"delivered={delivered} shutdown_seconds={time.monotonic() - started:.3f}", flush=True)


def forks(count: str) -> None:
    """Emit in a parent and in a forked child (the child gets a fresh sender)."""
    tracker = agent_shim.activate()
    with tracker.run("fork") as run:
        print(f"run={run.id.hex()}", flush=True)
        tracker.event("message", inputs={"who": "parent-before"})
        child = os.fork()
        if child == 0:
            for i in range(int(count)):
                tracker.event("message", inputs={"who": "child", "i": i})
            os._exit(0 if tracker.flush(30) else 1)
        for i in range(int(count)):
            tracker.event("message", inputs={"who": "parent", "i": i})
        _, status = os.waitpid(child, 0)
        print(f"child_status={status}", flush=True)
    print(f"flushed={tracker.flush(30)}", flush=True)


def disabled() -> None:
    """With the URL unset: nothing started, nothing imported, every call a no-op."""
    import threading

    before = set(sys.modules)
    tracker = agent_shim.activate()
    with tracker.run("off"):
        with tracker.span("agent_call"):
            tracker.event("message", inputs={"x": 1})
    print(f"enabled={tracker.enabled} threads={threading.active_count()} "
          f"zmq={'zmq' in sys.modules} new_modules={len(set(sys.modules) - before)} "
          f"flush={tracker.flush(1)}", flush=True)


if __name__ == "__main__":
    globals()[sys.argv[1]](*sys.argv[2:])
