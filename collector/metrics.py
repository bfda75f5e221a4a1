"""The collector's Prometheus metrics: one registry of its own, the only record of what it did."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .pipeline import Decoded
from .store import WriteResult


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
        self._last_drops: dict[tuple[object, ...], int] = {}

    def received(self, frame: bytes) -> None:
        self.frames_received.inc()
        self.bytes_received.inc(len(frame))

    def decoded(self, decoded: Decoded) -> None:
        for table, row in decoded.rows:
            self.records_received.labels(table.name).inc()
            if table.name == "dropped_events":
                # Shims report cumulative counts: count what is new since their last report.
                key = (row["run_id"], row["sender"], row["reason"])
                delta = row["count"] - self._last_drops.get(key, 0)
                if delta > 0:
                    self._last_drops[key] = row["count"]
                    self.shim_drops.labels(row["reason"]).inc(delta)

    def committed(self, frames: list[Decoded], result: WriteResult, seconds: float,
                  after_errors: bool) -> None:
        self.batch_frames.observe(len(frames))
        self.batch_rows.observe(sum(len(f.rows) for f in frames))
        self.commit_seconds.observe(seconds)
        for table, count in result.inserted.items():
            self.rows_stored.labels(table).inc(count)
        for table, count in result.merged.items():
            self.rows_merged.labels(table).inc(count)
        for reason, count in result.quarantined.items():
            self.quarantined.labels(reason).inc(count)
        if after_errors:
            self.database_recoveries.inc()

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
