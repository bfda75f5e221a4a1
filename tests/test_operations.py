"""Running it in production: metrics, readiness, authentication, retention, scale-out."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .helpers.support import CollectorProcess, agent, fetch, fetchval, finish, free_port, wait_for


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
        # 1,000 messages and one span, one row; the span is one record, or two if the sender
        # took its start before it ended (the collector merges them).
        assert _sample(metrics, 'cmbagent_rows_stored_total{table="execution_events"}') == 1001
        assert _sample(metrics, 'cmbagent_records_received_total{table="execution_events"}') in (
            1001, 1002)
        assert _sample(metrics, 'cmbagent_records_received_total{table="workflow_runs"}') == 2
        assert _sample(metrics, "cmbagent_frames_received_total") >= 1
        assert _sample(metrics, "cmbagent_batch_rows_count") >= 1
        assert _sample(metrics, "cmbagent_quarantined_total") == 0
        assert _sample(metrics, "cmbagent_pending_frames") == 0
        assert _get(f"http://{http}/readyz")[0] == 200
        assert _get(f"http://{http}/nowhere")[0] == 404
    finally:
        collector.kill()


def test_readiness_is_false_while_the_database_is_down(own_postgres: Any, tmp_path: Path) -> None:
    server = own_postgres
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


def _keys(directory: Path, name: str) -> tuple[str, Path]:
    """A key pair made by the CLI: the public key (Z85) and the secret key file."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "collector", "keys", str(directory), "--name",
                          name], check=True, capture_output=True, text=True).stdout
    return out.split("public key: ")[1].strip(), directory / f"{name}.key_secret"


def test_curve_accepts_allow_listed_clients_and_refuses_the_rest(
        database: str, tmp_path: Path, agent_env: dict[str, str]) -> None:
    from .test_delivery import _run_id

    server_public, server_secret = _keys(tmp_path / "server", "collector")
    _, trusted_secret = _keys(tmp_path / "allowed", "trusted")  # the allow-list holds trusted.key
    _, stranger_secret = _keys(tmp_path / "strangers", "stranger")
    collector = CollectorProcess(database, tmp_path, extra=(
        "--no-migrate", "--curve-secret-key-file", str(server_secret),
        "--curve-allow-dir", str(tmp_path / "allowed"))).start()
    base = {**agent_env, "CMBAGENT_COLLECTOR_URL": collector.url, "CMBAGENT_EXIT_TIMEOUT": "1"}
    try:
        trusted = agent({**base, "CMBAGENT_CURVE_SERVER_KEY": server_public,
                         "CMBAGENT_CURVE_SECRET_KEY_FILE": str(trusted_secret)}, "emit", "100")
        assert "flushed=True" in trusted.stdout
        stranger = agent({**base, "CMBAGENT_CURVE_SERVER_KEY": server_public,
                          "CMBAGENT_CURVE_SECRET_KEY_FILE": str(stranger_secret),
                          "CMBAGENT_SPOOL_DIR": str(tmp_path / "s1")}, "exit_now", "100").stdout
        plain = agent({**base, "CMBAGENT_SPOOL_DIR": str(tmp_path / "s2")}, "exit_now",
                      "100").stdout
        assert "delivered=False" in stranger and "delivered=False" in plain
        assert fetchval(database, "SELECT count(*) FROM execution_events WHERE run_id = $1",
                        _run_id(trusted.stdout)) == 101
        for refused in (stranger, plain):
            assert fetchval(database, "SELECT count(*) FROM workflow_runs WHERE id = $1",
                            _run_id(refused)) == 0
        assert fetchval(database, "SELECT count(*) FROM workflow_runs") == 1
        assert collector.alive()
    finally:
        collector.kill()


def test_prune_removes_exactly_what_it_says_while_ingestion_continues(
        collector: CollectorProcess, agent_env: dict[str, str]) -> None:
    import subprocess
    import sys

    from .test_delivery import _assert_exactly_once, _run_id

    env = {**agent_env, "CMBAGENT_COLLECTOR_URL": collector.url}
    old, kept = (_run_id(agent(env, "emit", "3000").stdout) for _ in range(2))
    dsn = collector.dsn
    fetch_count = "SELECT count(*) FROM {} WHERE run_id = $1"
    fetch(dsn, "UPDATE workflow_runs SET started_at = started_at - interval '40 days', "
             "completed_at = completed_at - interval '40 days' WHERE id = $1", old)
    streaming = agent(env, "emit", "20000", "0.01", "60", wait=False)
    wait_for(lambda: fetchval(dsn, "SELECT count(*) FROM workflow_runs") == 3)

    prune = [sys.executable, "-m", "collector", "--dsn", dsn, "prune", "--older-than", "30d",
             "--batch-size", "500"]
    dry = subprocess.run([*prune, "--dry-run"], check=True, capture_output=True, text=True).stdout
    assert f"would remove run {old}" in dry and "1 runs would be removed" in dry
    assert fetchval(dsn, fetch_count.format("execution_events"), old) == 3001
    done = subprocess.run(prune, check=True, capture_output=True, text=True).stdout
    assert f"removing run {old}" in done and "removed 1 runs" in done

    for table in ("execution_events", "cost_records", "dag_nodes", "dag_edges"):
        assert fetchval(dsn, fetch_count.format(table), old) == 0
    assert fetchval(dsn, "SELECT count(*) FROM workflow_runs WHERE id = $1", old) == 0
    assert fetchval(dsn, "SELECT count(*) FROM sessions") == 2  # the pruned run's session too
    assert fetchval(dsn, fetch_count.format("execution_events"), kept) == 3001
    output = finish(streaming)
    assert "flushed=True" in output
    _assert_exactly_once(dsn, _run_id(output), 20000)


def test_two_collectors_on_one_database_store_redelivered_events_once(
        database: str, tmp_path: Path) -> None:
    import zmq

    from agent_shim.wire import decode_reply, encode_frame, new_id

    from .helpers.frames import good_records

    collectors = [CollectorProcess(database, tmp_path, extra=("--no-migrate",)).start()
                  for _ in range(2)]
    run, records = good_records(2000)
    frames = [(new_id(), records[i:i + 200]) for i in range(0, len(records), 200)]
    context = zmq.Context()
    try:
        for collector in collectors:  # every frame reaches both collectors: a redelivery
            sock = context.socket(zmq.DEALER)
            sock.connect(collector.url)
            for batch_id, chunk in frames:
                sock.send(encode_frame(batch_id, {}, chunk))
            acked: set[bytes] = set()
            while len(acked) < len(frames):
                assert sock.poll(20_000), "acks missing"
                acked.update(decode_reply(sock.recv())[1])
            sock.close(linger=0)
    finally:
        context.term()
        for collector in collectors:
            collector.kill()
    import uuid

    rows = fetchval(database, "SELECT count(*) FROM execution_events WHERE run_id = $1",
                    uuid.UUID(bytes=run))
    assert rows == 2000
    assert fetchval(
        database, "SELECT count(DISTINCT execution_order) FROM execution_events") == 2000


def test_agent_fails_over_to_a_second_endpoint_with_nothing_lost(
        database: str, tmp_path: Path, agent_env: dict[str, str]) -> None:
    from .test_delivery import _assert_exactly_once, _run_id

    first = CollectorProcess(database, tmp_path, extra=("--no-migrate",)).start()
    second = CollectorProcess(database, tmp_path, extra=("--no-migrate",)).start()
    env = {**agent_env, "CMBAGENT_COLLECTOR_URL": f"{first.url},{second.url}",
           "CMBAGENT_ACK_TIMEOUT": "2"}
    streaming = agent(env, "emit", "20000", "0.01", "60", wait=False)
    try:
        wait_for(lambda: fetchval(database, "SELECT count(*) FROM execution_events") > 2000)
        first.kill()  # gone for good: the rest must go through the second
        output = finish(streaming)
        assert "flushed=True" in output, output
        _assert_exactly_once(database, _run_id(output), 20000)
    finally:
        for collector in (first, second):
            if collector.alive():
                collector.kill()


def test_messages_over_the_configured_size_are_refused_before_they_are_read(
        database: str, tmp_path: Path) -> None:
    import uuid

    import zmq

    from agent_shim.wire import decode_reply, encode_frame, new_id

    from .helpers.frames import good_records

    limit = 9 * 1024 * 1024
    collector = CollectorProcess(database, tmp_path, extra=(
        "--no-migrate", "--max-message-bytes", str(limit))).start()
    run, records = good_records(10)
    context = zmq.Context()
    try:
        huge = context.socket(zmq.DEALER)
        huge.connect(collector.url)
        huge.send(encode_frame(new_id(), {}, [*records, b"\xc4" * 1 + b"x" * (2 * limit)]))
        good = context.socket(zmq.DEALER)
        good.connect(collector.url)
        batch_id = new_id()
        good.send(encode_frame(batch_id, {}, records))
        assert good.poll(20_000) and decode_reply(good.recv())[1] == [batch_id]
        assert not huge.poll(1_000), "the oversized message was answered"
        for sock in (huge, good):
            sock.close(linger=0)
    finally:
        context.term()
        collector.kill()
    # The good frame's ten events, once; nothing of the refused one, not even in quarantine.
    assert fetchval(database, "SELECT count(*) FROM execution_events WHERE run_id = $1",
                    uuid.UUID(bytes=run)) == 10
    assert fetchval(database, "SELECT count(*) FROM quarantine") == 0
