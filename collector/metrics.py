"""The collector's Prometheus metrics: one registry of its own, the only record of what it did.

Label values come from fixed sets (unknown ones are counted as ``other``), and the memory of
what each sender last reported is bounded, so no client can grow ``/metrics`` or the daemon.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections import OrderedDict

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .pipeline import REASONS, Decoded
from .store import WriteResult
from .tables import DROPS

#: The reasons a shim gives for the events it drops (``agent_shim``); others count as ``other``.
SHIM_DROP_REASONS = frozenset({"queue_full", "spool_full", "exit_timeout", "refused",
                               "unacknowledged", "spool_damaged", "unencodable", "oversize",
                               "after_shutdown"})
#: (run, sender, reason) triples whose last reported drop count is remembered.
MAX_DROP_SENDERS = 10_000


def quarantine_label(reason: str) -> str:
    if reason in REASONS:
        return reason
    return "db_refused" if reason.startswith("db_") else "other"


class Metrics:
    """Counters and histograms the daemon updates; exported on ``/metrics``."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.frames_received = Counter("cmbagent_frames_received", "Frames read from the socket",
                                       registry=registry)
        self.bytes_received = Counter("cmbagent_bytes_received", "Bytes of frames read",
                                      registry=registry)
        self.records_received = Counter("cmbagent_records_received",
                                        "Valid records decoded, by table", ["table"],
                                        registry=registry)
        self.rows_stored = Counter("cmbagent_rows_stored", "Rows inserted, by table", ["table"],
                                   registry=registry)
        self.rows_merged = Counter(
            "cmbagent_rows_merged", "Rows merged into a stored row (span ends, redeliveries)",
            ["table"], registry=registry)
        self.quarantined = Counter("cmbagent_quarantined", "Input refused, by reason", ["reason"],
                                   registry=registry)
        self.shim_drops = Counter("cmbagent_shim_dropped_events",
                                  "Events shims reported dropping, by reason", ["reason"],
                                  registry=registry)
        self.batch_frames = Histogram("cmbagent_batch_frames", "Frames per committed batch",
                                      buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
                                      registry=registry)
        self.batch_rows = Histogram("cmbagent_batch_rows", "Rows per committed batch",
                                    buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000, 10000),
                                    registry=registry)
        self.commit_seconds = Histogram("cmbagent_commit_seconds", "Time to store one batch",
                                        registry=registry)
        self.pending_frames = Gauge("cmbagent_pending_frames", "Frames received, not yet stored",
                                    registry=registry)
        self.pending_bytes = Gauge("cmbagent_pending_bytes", "Bytes received, not yet stored",
                                   registry=registry)
        self.database_errors = Counter("cmbagent_database_errors",
                                       "Failed attempts to store a batch, by error", ["error"],
                                       registry=registry)
        self.database_recoveries = Counter(
            "cmbagent_database_recoveries", "Batches stored after the database had failed",
            registry=registry)
        self.reading_paused = Counter("cmbagent_reading_paused",
                                      "Times reading stopped at the memory bound",
                                      registry=registry)
        self.write_transactions = Counter(
            "cmbagent_write_transactions", "Transactions tried to store batches (more than one "
            "per batch when the database refuses rows)", registry=registry)
        self._last_drops: OrderedDict[tuple[object, ...], int] = OrderedDict()

    def received(self, size: int) -> None:
        self.frames_received.inc()
        self.bytes_received.inc(size)

    def decoded(self, decoded: Decoded) -> None:
        tables = Tally(table for table, _ in decoded.rows)  # one increment per table
        for table, count in tables.items():
            self.records_received.labels(table.name).inc(count)
        if DROPS in tables:
            for table, row in decoded.rows:
                if table is DROPS:
                    drop = DROPS.as_dict(row)
                    self._count_shim_drops(drop["run_id"], drop["sender"], drop["reason"],
                                           drop["count"])

    def _count_shim_drops(self, run: object, sender: str, reason: str, total: int) -> None:
        """Shims report cumulative counts: count what is new since the last report. Only the
        latest :data:`MAX_DROP_SENDERS` reporters are remembered; one forgotten and heard
        again is counted from zero (the stored counts in ``dropped_events`` stay exact)."""
        key = (run, sender, reason)
        delta = total - self._last_drops.get(key, 0)
        if delta <= 0:
            return
        self._last_drops[key] = total
        self._last_drops.move_to_end(key)
        if len(self._last_drops) > MAX_DROP_SENDERS:
            self._last_drops.popitem(last=False)
        label = reason if reason in SHIM_DROP_REASONS else "other"
        self.shim_drops.labels(label).inc(delta)

    def committed(self, frames: list[Decoded], result: WriteResult, seconds: float,
                  after_errors: bool) -> None:
        self.batch_frames.observe(len(frames))
        self.batch_rows.observe(sum(len(f.rows) for f in frames))
        self.commit_seconds.observe(seconds)
        self.write_transactions.inc(result.transactions)
        for table, count in result.inserted.items():
            self.rows_stored.labels(table).inc(count)
        for table, count in result.merged.items():
            self.rows_merged.labels(table).inc(count)
        for reason, count in result.quarantined.items():
            self.quarantined.labels(quarantine_label(reason)).inc(count)
        if after_errors:
            self.database_recoveries.inc()

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
