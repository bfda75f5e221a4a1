"""Test helpers: a tracker whose records land in a list instead of a socket."""

from __future__ import annotations

from typing import Any

from . import records
from .config import ShimSettings
from .payload import Cleaner
from .records import NodeMoment, Record, Span
from .tracker import Tracker


class RecordingSink:
    """Keeps every record, cleaned exactly as the sender would clean it before packing; a
    span's start and end as two records (the sender sends a short span as one)."""

    def __init__(self, settings: ShimSettings | None = None) -> None:
        settings = settings or ShimSettings()
        self._cleaner = Cleaner(settings.max_field_chars, settings.redact_keys,
                                settings.redact_patterns)
        self.records: list[Record] = []

    def submit(self, record: Record) -> None:
        self.records.append(self._cleaner.clean_record(dict(record)))

    def span_started(self, span: Span) -> None:
        self.submit(records.span_start(span))

    def span_ended(self, span: Span) -> None:
        self.submit(records.span_end(span))

    def flush(self, timeout: float) -> bool:
        return True

    def shutdown(self, timeout: float) -> bool:
        return True

    def forked(self) -> RecordingSink:
        return RecordingSink()

    def of(self, kind: str, moment: NodeMoment | None = None, **match: Any) -> list[Record]:
        """The records of one kind whose fields equal ``match`` (and that say ``moment``: a
        span's or node's ``start`` or ``end``, or ``point``)."""
        return [r for r in self.records
                if r["k"] == kind and all(r.get(k) == v for k, v in match.items())
                and (moment is None or records.moment(r) == moment)]


class DiscardingSink:
    """Throws away what it is handed: what the hooks and record building cost alone."""

    def submit(self, record: Record) -> None:
        pass

    def span_started(self, span: Span) -> None:
        pass

    def span_ended(self, span: Span) -> None:
        pass

    def flush(self, timeout: float) -> bool:
        return True

    def shutdown(self, timeout: float) -> bool:
        return True

    def forked(self) -> DiscardingSink:
        return self


def recording_tracker(settings: ShimSettings | None = None) -> tuple[Tracker, RecordingSink]:
    """A live tracker (not the process's) and the sink that receives its records."""
    settings = settings or ShimSettings(collector_urls=("inproc://recording",))
    sink = RecordingSink(settings)
    return Tracker(settings, sink), sink
