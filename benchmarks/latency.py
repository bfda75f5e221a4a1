"""Part 4: latency from emit to committed row, at 1,000 events/s and near the maximum.

Method: a tracker in this process emits point events at a fixed rate. Its sender is the real
one, subclassed only to note, for every frame, the emit times (``timestamp``, set when the record is
built) of the events it carries, and the wall-clock time its acknowledgement arrives. The
collector acknowledges a frame only after the transaction holding its rows has committed, so
``ack time - timestamp`` is an upper bound of emit-to-commit: it includes the acknowledgement's trip
back over loopback ZeroMQ (well under a millisecond). Same clock, same machine.
"""

from __future__ import annotations

import time
from typing import Any

from .harness import Bench, collector
from .report import Result
from .stats import Summary, percentile

GOAL_P99_MS = 50.0
LOW_RATE = 1_000


def timed_sender(settings: Any) -> Any:
    from agent_shim.sender import Sender
    from agent_shim.wire import ACK, decode_frame

    class TimedSender(Sender):
        """Notes each frame's events' emit times and when its acknowledgement arrived."""

        def __init__(self, settings: Any) -> None:
            super().__init__(settings)
            self.emitted: dict[bytes, list[int]] = {}
            self.acked: dict[bytes, float] = {}
            framer, delivery = self._delivery.framer, self._delivery
            pack, replied = framer.pack, delivery.replied

            def timed_pack(*args: Any) -> Any:
                frame = pack(*args)
                if frame is not None:
                    self.emitted[frame.batch_id] = [  # events (not the session and run)
                        r["timestamp"] for r in decode_frame(frame.data)[3] if r["k"] == "event"]
                return frame

            def timed_replied(kind: Any, batch_ids: list[bytes]) -> None:
                for batch_id in batch_ids if kind == ACK else ():
                    self.acked.setdefault(batch_id, time.time())
                replied(kind, batch_ids)

            framer.pack = timed_pack  # type: ignore[method-assign]
            delivery.replied = timed_replied  # type: ignore[method-assign]

        def latencies_ms(self) -> list[float]:
            return [(self.acked[b] - ts / 1e6) * 1e3 for b, stamps in self.emitted.items()
                    if b in self.acked for ts in stamps]

    return TimedSender(settings)


def measure(bench: Bench, url: str, rate: float, seconds: float) -> tuple[list[float], float]:
    """Emit at ``rate`` for ``seconds``; each event's emit-to-ack milliseconds, achieved rate."""
    from agent_shim.tracker import Tracker

    settings = bench.settings(url)
    sender = timed_sender(settings)
    tracker = Tracker(settings, sender)
    tracker.event("note", meta={"warm": True})
    tracker.flush(30)
    sender.emitted.clear()
    count = int(rate * seconds)
    content = {"sender": "planner", "recipient": "engineer", "content": "Fit the spectrum. " * 20}
    started = time.perf_counter()
    for i in range(count):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        tracker.event("message", agent_name="engineer", inputs=content, meta={"i": i})
    achieved = count / (time.perf_counter() - started)
    if not tracker.flush(60):
        raise RuntimeError("the latency run's events were not all acknowledged")
    tracker.shutdown(5)
    return sender.latencies_ms(), achieved


def run(bench: Bench) -> list[Result]:
    rounds, seconds = bench.scale(3, 2), bench.scale(5.0, 3.0)
    high = 0.8 * bench.measured.get("throughput", 12_500)
    dsn = bench.database("latency")
    results = []
    with collector(bench, dsn) as process:
        for rate in (LOW_RATE, high):
            p50, p99, achieved = [], [], []
            for _ in range(rounds):
                latencies, rate_achieved = measure(bench, process.url, rate, seconds)
                p50.append(percentile(latencies, 50))
                p99.append(percentile(latencies, 99))
                achieved.append(rate_achieved)
            label = f"{LOW_RATE:,}/s" if rate == LOW_RATE else \
                f"{Summary.of(achieved).median:,.0f}/s (80% of part 3's max)"
            goal = rate == LOW_RATE
            results.append(Result(
                "4 latency", f"emit→commit at {label}",
                f"p50 {Summary.of(p50).format(' ms')}, p99 {Summary.of(p99).format(' ms')}",
                goal="p99 < 50 ms" if goal else "-",
                met=Summary.of(p99).median < GOAL_P99_MS if goal else None,
                note="" if goal or "throughput" in bench.measured else
                "part 3 did not run: 80% of 12,500/s assumed"))
    return results
