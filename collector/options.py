"""What the collector's commands share: argument types, and the database ``--dsn`` names.

``cli`` and ``otlp.commands`` both use these, so neither imports the other's internals.
"""

from __future__ import annotations

import argparse
import uuid
from typing import Any

from .settings import Settings


def positive(text: str) -> int:
    """An argument that is a whole number above zero."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {value}")
    return value


def execution_order(text: str) -> int:
    """An argument that is an ``execution_order`` (a bigint, never negative)."""
    value = int(text)
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"an execution_order is 0 to {2**63 - 1}, not {value}")
    return value


def run_id(text: str) -> uuid.UUID:
    """An argument that is a run's id."""
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a run id; `cmbagent-collector runs` lists them") from None


def database(settings: Settings) -> tuple[str, Any]:
    """The configured DSN, or the embedded server's (started on demand) and its handle."""
    if settings.dsn:
        return settings.dsn, None
    from .embedded import start_embedded

    return start_embedded(settings.data_dir)
