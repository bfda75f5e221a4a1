"""Agent programs the tests run in their own processes: ``python programs.py NAME [ARGS]``.

Each prints one line per fact the test needs (``key=value``).
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import re
import resource
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
    delivery = sink._delivery
    frames = [(f.seq, f.sent_at, f.path is not None) for f in delivery.in_flight.values()]
    print(f"sender alive={sink._thread and sink._thread.is_alive()} queue={len(sink._queue)} "
          f"in_flight={frames} backlog={[f.seq for f in delivery.backlog]} "
          f"requests={[(r.upto, r.done.is_set()) for r in sink._requests]} "
          f"seq={delivery.framer.seq}", file=sys.stderr, flush=True)


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


PROSE = ("The capital budget rapidly grew as the therapist's team mapped every pipeline stage. ")


def _prose(size: int) -> str:
    """Ordinary text of ``size`` characters whose words make redaction take its slow path."""
    return (PROSE * (size // len(PROSE) + 1))[:size]


def emit_and_exit(count: str, text_chars: str = "0", flush: str = "0", secret: str = "") -> None:
    """Emit ``count`` messages (``text_chars`` of prose each, then ``secret``) in a run and one
    in the implicit run, then leave through atexit as programs do; prints how long the exit
    took."""
    left_main = [0.0]
    # Registered before the tracker's atexit hook, so it runs after it.
    atexit.register(lambda: print(f"exit_seconds={time.monotonic() - left_main[0]:.3f}",
                                  flush=True))
    tracker = agent_shim.activate()
    text = _prose(int(text_chars)) + secret
    tracker.event("message", inputs={"i": 0})
    print(f"implicit_run={tracker.scope().run.hex()}", flush=True)
    with tracker.run("emit-and-exit") as run:
        print(f"run={run.id.hex()}", flush=True)
        for i in range(int(count)):
            tracker.event("message", inputs={"i": i, "text": text})
    if float(flush):
        print(f"flushed={tracker.flush(float(flush))}", flush=True)
    left_main[0] = time.monotonic()


def emit_wait_emit(count: str) -> None:
    """Emit ``count`` messages in a run (pausing every 80, so that the sender keeps up), wait for
    a line on stdin, emit ``count`` more at once, exit."""
    tracker = agent_shim.activate()
    with tracker.run("wait-between") as run:
        print(f"run={run.id.hex()}", flush=True)
        for half in range(2):
            for i in range(int(count)):
                tracker.event("message", inputs={"i": half * int(count) + i})
                if half == 0 and i % 80 == 79:
                    time.sleep(0.002)
            if half == 0:
                print("waiting", flush=True)
                sys.stdin.readline()

def big_payloads(count: str, mib: str) -> None:
    """Emit ``count`` events of ``mib`` MiB each; prints the peak RSS before and after, in MiB."""
    tracker = agent_shim.activate()
    text = "x" * (int(float(mib) * 2**20))
    with tracker.run("big") as run:
        print(f"run={run.id.hex()}", flush=True)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        for i in range(int(count)):
            tracker.event("message", inputs={"i": i, "text": text})
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak_rss_mib_before={before:.0f} peak_rss_mib_after={after:.0f}", flush=True)


def _emit_in_child(task: int, count: int) -> int:
    tracker = agent_shim.activate()
    for i in range(count):
        tracker.event("message", inputs={"task": task, "i": i})
    return task


def multiprocessing_children(how: str, tasks: str, count: str) -> None:
    """Emit ``count`` events in each of ``tasks`` children (fork start method): ``process``
    (mp.Process, started and joined) or ``pool`` (Pool(2).map inside ``with``, which exits
    through terminate)."""
    context = multiprocessing.get_context("fork")
    tracker = agent_shim.activate()
    with tracker.run("multiprocessing") as run:
        print(f"run={run.id.hex()}", flush=True)
        if how == "process":
            children = [context.Process(target=_emit_in_child, args=(t, int(count)))
                        for t in range(int(tasks))]
            for child in children:
                child.start()
            for child in children:
                child.join()
            print(f"exit_codes={','.join(str(c.exitcode) for c in children)}", flush=True)
        else:
            with context.Pool(2) as pool:
                pool.starmap(_emit_in_child, [(t, int(count)) for t in range(int(tasks))])
    print(f"flushed={tracker.flush(30)}", flush=True)


def deliver_spool(timeout: str = "60") -> None:
    """Start a sender (it adopts what earlier processes left) and wait until the spool is
    empty."""
    tracker = agent_shim.activate()
    tracker.event("message", inputs={"adopter": True})
    spool = tracker._sink._delivery.spool.directory  # this collector's part of the spool

    def spooled() -> list[str]:
        return [p.name for p in spool.glob("*")
                if re.fullmatch(r"[0-9a-f]{16}-[0-9a-f]{16}\.frame", p.name)]

    deadline = time.monotonic() + float(timeout)
    while time.monotonic() < deadline and spooled():
        time.sleep(0.1)
    print(f"left={spooled()}", flush=True)
    print(f"flushed={tracker.flush(30)}", flush=True)


if __name__ == "__main__":
    globals()[sys.argv[1]](*sys.argv[2:])
