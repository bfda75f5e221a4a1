"""The administrative commands under wrong arguments and awkward states: clear one-line errors,
never a traceback, never a hang, never a secret readable by others."""

from __future__ import annotations

import stat
import subprocess
import sys
import time
from pathlib import Path

from .helpers.support import fetch, fetchval, free_port


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "collector", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_prune_refuses_batch_sizes_that_would_loop_or_fail(database: str) -> None:
    for size in ("0", "-1"):
        result = cli("--dsn", database, "prune", "--older-than", "30d", "--batch-size", size)
        assert result.returncode == 2, result
        assert f"must be positive, not {size}" in result.stderr
        assert "Traceback" not in result.stderr


def test_prune_refuses_ages_beyond_a_century(database: str) -> None:
    for flag in ("--older-than", "--quarantine-older-than"):
        result = cli("--dsn", database, "prune", flag, "99999999999999d")
        assert result.returncode == 1
        assert result.stderr.strip() == ("prune: age '99999999999999d' is more than a century "
                                         "(at most 36525d)")


def test_prune_removes_old_quarantined_inputs_only(database: str) -> None:
    fetch(database, """
        INSERT INTO quarantine (digest, reason, payload_size, first_seen, last_seen)
        SELECT sha256(g::text::bytea), 'bad_record', 1, now() - interval '60 days',
               CASE WHEN g <= 25 THEN now() - interval '40 days' ELSE now() END
        FROM generate_series(1, 30) g""")
    prune = ("--dsn", database, "prune", "--quarantine-older-than", "30d", "--batch-size", "10")
    dry = cli(*prune, "--dry-run")
    assert dry.returncode == 0 and "dry run: would remove 25 quarantined inputs" in dry.stdout
    assert fetchval(database, "SELECT count(*) FROM quarantine") == 30
    done = cli(*prune)
    assert done.returncode == 0 and "removed 25 quarantined inputs" in done.stdout, done.stderr
    # Only the recently seen ones stay (and no run was touched: none was asked for).
    assert fetchval(database, "SELECT count(*) FROM quarantine "
                    "WHERE last_seen > now() - interval '1 day'") == 5
    assert fetchval(database, "SELECT count(*) FROM quarantine") == 5


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keys_never_overwrite_a_pair_unless_forced_and_keep_the_secret_private(
        tmp_path: Path) -> None:
    made = cli("keys", str(tmp_path), "--name", "collector")
    assert made.returncode == 0, made.stderr
    public, secret = tmp_path / "collector.key", tmp_path / "collector.key_secret"
    assert _mode(secret) == 0o600 and _mode(public) == 0o644
    before = secret.read_bytes()

    again = cli("keys", str(tmp_path), "--name", "collector")
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert "exist; agents and collectors using them would be locked out" in again.stderr
    assert secret.read_bytes() == before

    secret.chmod(0o644)  # a pair someone loosened: --force must not write into that mode
    forced = cli("keys", str(tmp_path), "--name", "collector", "--force")
    assert forced.returncode == 0, forced.stderr
    assert secret.read_bytes() != before and _mode(secret) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["collector.key", "collector.key_secret"]


def test_serve_with_the_database_down_exits_with_one_line_after_bounded_retries(
        tmp_path: Path) -> None:
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    started = time.monotonic()
    result = cli("--dsn", closed, "--data-dir", str(tmp_path), "serve", "--bind",
                 f"tcp://127.0.0.1:{free_port()}", timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"cannot connect to {closed} after 10 attempts")
    assert last.endswith("is PostgreSQL running there?")
    assert result.stderr.count("retries remaining") == 9
    assert time.monotonic() - started < 60
