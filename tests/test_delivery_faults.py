"""Nothing lost silently: whatever goes wrong on the agent's side, every event the shim accepted
is stored, or spooled and delivered by a later process, or counted as dropped in its run.

Each test emits a known number of messages, lets a later process deliver what was spooled, then
checks stored + counted == emitted, with nothing stored twice.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
import zmq.auth

from agent_shim.spool import destination_key
from agent_shim.wire import ACK, decode_frame, encode_frame, encode_reply

from .helpers.frames import good_records
from .helpers.support import (
    CollectorProcess,
    agent,
    fetch,
    fetchval,
    finish,
    printed,
    run_id,
    tally,
    wait_for,
)

EXIT_TIMEOUT = 2.0  # agent_env's


def _deliver_spool(env: dict[str, str]) -> None:
    output = agent(env, "deliver_spool").stdout
    assert "left=[]" in output and "flushed=True" in output, output


def _assert_accounted(dsn: str, run: uuid.UUID, messages: int) -> None:
    """Each of the run's records (its start, its messages, its end) is stored once or counted as
    dropped."""
    counts = tally(dsn, run)
    assert counts.stored == counts.distinct, f"stored twice: {counts}"
    started, ended = fetch(dsn, "SELECT started_at IS NOT NULL, completed_at IS NOT NULL "
                           "FROM workflow_runs WHERE id = $1", run)[0]
    assert counts.stored + started + ended + counts.dropped == messages + 2, (counts, started,
                                                                               ended)


@pytest.mark.parametrize("collector_up", [True, False], ids=["collector-up", "collector-down"])
def test_exit_with_a_backlog_is_bounded_and_loses_nothing(
        database: str, tmp_path: Path, agent_env: dict[str, str], collector_up: bool) -> None:
    # 10,000 events of 4 KB prose whose words make redaction slow: far more than the sender can
    # clean within the exit timeout.
    collector = CollectorProcess(database, tmp_path, extra=("--no-migrate",))
    if collector_up:
        collector.start()
    env = {**agent_env, "CMBAGENT_COLLECTOR_URL": collector.url}
    output = agent(env, "emit_and_exit", "10000", "4096").stdout
    assert float(printed(output, "exit_seconds")) <= EXIT_TIMEOUT + 0.5, output

    if not collector_up:
        collector.start()
    _deliver_spool(env)
    _assert_accounted(database, run_id(output), 10_000)
    _assert_accounted(database, run_id(output, "implicit_run"), 1)  # its end came at exit
    collector.kill()


def test_what_exit_spools_is_cleaned_first_and_what_it_cannot_clean_in_time_is_counted(
        database: str, tmp_path: Path, agent_env: dict[str, str]) -> None:
    collector = CollectorProcess(database, tmp_path, extra=("--no-migrate",))
    secret = "sk-proj-" + "A1b2C3d4" * 5
    env = {**agent_env, "CMBAGENT_COLLECTOR_URL": collector.url, "CMBAGENT_EXIT_TIMEOUT": "0.3"}
    output = agent(env, "emit_and_exit", "10000", "4096", "0", f" key={secret}").stdout
    spooled = [p for p in Path(agent_env["CMBAGENT_SPOOL_DIR"]).rglob("*") if p.is_file()]
    assert any(p.suffix == ".frame" for p in spooled), spooled
    assert not any(secret[:12].encode() in p.read_bytes() for p in spooled)
    assert {oct(p.stat().st_mode & 0o777) for p in spooled} == {"0o600"}

    collector.start()
    _deliver_spool(env)
    _assert_accounted(database, run_id(output), 10_000)
    # The hurried exit still closed the run: its end went with the drop counts.
    assert tally(database, run_id(output)).dropped_for.get("exit_timeout", 0) > 0
    assert fetchval(database, "SELECT status FROM workflow_runs WHERE id = $1",
                    run_id(output)) == "completed"
    assert fetchval(database, "SELECT count(*) FROM execution_events "
                    "WHERE strpos(inputs::text, $1) > 0", secret[:12]) == 0
    assert fetchval(database, "SELECT count(*) FROM execution_events "
                    "WHERE strpos(inputs::text, '[REDACTED]') > 0") > 0
    collector.kill()


@pytest.mark.parametrize("how, tasks, count", [("process", 3, 2000), ("pool", 8, 1000)])
def test_multiprocessing_children_deliver_before_they_end(
        database: str, collector: CollectorProcess, agent_env: dict[str, str], how: str, tasks: int,
        count: int) -> None:
    env = {**agent_env, "CMBAGENT_COLLECTOR_URL": collector.url}
    output = agent(env, "multiprocessing_children", how, str(tasks), str(count)).stdout
    assert "flushed=True" in output, output
    if how == "process":
        assert printed(output, "exit_codes") == ",".join(["0"] * tasks)
    _deliver_spool(env)
    _assert_accounted(database, run_id(output), tasks * count)


def _curve_settings(keys: Path, broken: str) -> dict[str, str]:
    keys.mkdir()
    server_public, _ = zmq.auth.load_certificate(
        zmq.auth.create_certificates(str(keys), "server")[0])
    public_file, secret_file = zmq.auth.create_certificates(str(keys), "agent")
    settings = {"CMBAGENT_CURVE_SERVER_KEY": server_public.decode(),
                "CMBAGENT_CURVE_SECRET_KEY_FILE": secret_file}
    if broken == "no secret key file":
        settings["CMBAGENT_CURVE_SECRET_KEY_FILE"] = str(keys / "missing.key_secret")
    elif broken == "public key file as the secret":
        settings["CMBAGENT_CURVE_SECRET_KEY_FILE"] = public_file
    else:
        settings["CMBAGENT_CURVE_SERVER_KEY"] = "not a key"
    return settings


@pytest.mark.parametrize("broken, says", [
    ("no secret key file", "cannot be read as a key pair"),
    ("public key file as the secret", "holds a public key only"),
    ("malformed server key", "is not a Z85 public key"),
])
def test_a_dead_sender_says_what_to_fix_once_and_its_events_are_delivered_later(
        database: str, collector: CollectorProcess, agent_env: dict[str, str], tmp_path: Path,
        broken: str, says: str) -> None:
    env = {**agent_env, "CMBAGENT_COLLECTOR_URL": collector.url}
    result = agent({**env, **_curve_settings(tmp_path / "keys", broken)},
                   "emit_and_exit", "3000", "0", "5")
    assert "flushed=False" in result.stdout, result.stdout  # at once: not after the 5 s
    assert result.stderr.count(says) == 1 and "Traceback" not in result.stderr, result.stderr
    assert fetchval(database, "SELECT count(*) FROM execution_events") == 0

    _deliver_spool(env)  # a process with working settings
    counts = tally(database, run_id(result.stdout))
    assert (counts.stored, counts.distinct, counts.dropped_for) == (3000, 3000, {})


def test_agent_memory_is_bounded_in_bytes_with_the_collector_down(
        database: str, tmp_path: Path, agent_env: dict[str, str]) -> None:
    collector = CollectorProcess(database, tmp_path, extra=("--no-migrate",))
    env = {**agent_env, "CMBAGENT_COLLECTOR_URL": collector.url}
    output = agent(env, "big_payloads", "1500", "1").stdout  # 1.5 GiB of payloads
    grown = float(printed(output, "peak_rss_mib_after")) - float(
        printed(output, "peak_rss_mib_before"))
    # The default bound: 64 MiB queued; past half of it events spill to the spool. The window
    # of frames in flight holds cleaned (truncated) events only.
    assert grown < 200, output
    collector.start()
    _deliver_spool(env)
    _assert_accounted(database, run_id(output), 1500)
    collector.kill()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB file system (tmpfs; the tests run as root)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_counts_what_the_spool_cannot_take_and_leaves_no_partial_files(
        database: str, tmp_path: Path, agent_env: dict[str, str], small_disk: Path) -> None:
    collector = CollectorProcess(database, tmp_path, extra=("--no-migrate",))
    env = {**agent_env, "CMBAGENT_COLLECTOR_URL": collector.url,
           "CMBAGENT_SPOOL_DIR": str(small_disk / "spool")}
    output = agent(env, "emit_and_exit", "30000", "100").stdout
    assert not [p for p in small_disk.rglob("*") if p.suffix == ".tmp"]
    collector.start()
    _deliver_spool(env)
    counts = tally(database, run_id(output))
    assert counts.dropped > 0 and counts.stored > 0, counts  # the disk did fill up
    _assert_accounted(database, run_id(output), 30_000)
    collector.kill()


def test_a_disk_others_fill_up_still_takes_the_drop_counts(
        database: str, tmp_path: Path, agent_env: dict[str, str], small_disk: Path) -> None:
    # The agent has spooled some frames when another process takes the last free byte (a
    # shared quota): what it cannot spool afterwards is counted, in room it reserved.
    collector = CollectorProcess(database, tmp_path, extra=("--no-migrate",))
    env = {**agent_env, "CMBAGENT_COLLECTOR_URL": collector.url,
           "CMBAGENT_SPOOL_DIR": str(small_disk / "spool"), "CMBAGENT_QUEUE_SIZE": "100"}
    running = agent(env, "emit_wait_emit", "10000", wait=False)
    assert running.stdout is not None and running.stdin is not None
    lines = [running.stdout.readline() for _ in range(2)]
    assert lines[1] == "waiting\n", lines
    wait_for(lambda: list(small_disk.rglob("*.frame")))
    filler = os.open(small_disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(filler, bytes(4096)):
            pass
    except OSError:  # ENOSPC: the disk is full
        pass
    finally:
        os.close(filler)
    running.stdin.write("go\n")
    running.stdin.flush()
    output = lines[0] + finish(running)

    (small_disk / "filler").unlink()
    collector.start()
    _deliver_spool(env)
    counts = tally(database, run_id(output))
    assert counts.dropped_for.get("spool_full", 0) > 0, counts
    _assert_accounted(database, run_id(output), 20_000)
    collector.kill()


def test_the_spool_is_private(agent_env: dict[str, str]) -> None:
    env = {**agent_env, "CMBAGENT_COLLECTOR_URL": "tcp://127.0.0.1:9",
           "CMBAGENT_EXIT_TIMEOUT": "0.2"}
    agent(env, "emit_and_exit", "100")
    spool = Path(agent_env["CMBAGENT_SPOOL_DIR"])
    files = [p for p in spool.rglob("*") if p.is_file()]
    assert files
    assert {oct(p.stat().st_mode & 0o777) for p in [spool, *spool.iterdir()]} == {"0o700"}
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {"0o600"}
    assert os.stat(spool).st_uid == os.getuid()


def _frame_file(directory: Path, owner: str, seq: int, records: list[bytes]) -> Path:
    batch_id = bytes.fromhex(owner) + seq.to_bytes(8, "big")
    path = directory / f"{owner}-{seq:016x}.frame"
    path.write_bytes(encode_frame(batch_id, {}, records))
    return path


def test_foreign_files_are_left_alone_and_a_damaged_frame_is_removed_and_counted(
        database: str, collector: CollectorProcess, agent_env: dict[str, str]) -> None:
    root = Path(agent_env["CMBAGENT_SPOOL_DIR"])
    spool = root / destination_key((collector.url,))
    spool.mkdir(parents=True)
    foreign = [spool / "zz-01.frame", spool / "0123456789abcdef-zz.frame", spool / "notes.txt"]
    for path in foreign:
        path.write_bytes(b"not ours")
    run, records = good_records(100)  # a session, the run's start, 100 messages, its end
    whole = _frame_file(spool, "00000000000000aa", 1, records[:2] + records[-1:] + records[2:12])
    damaged = _frame_file(spool, "00000000000000aa", 2, records[12:-1])
    damaged.write_bytes(damaged.read_bytes()[:len(damaged.read_bytes()) // 2])
    flat = _frame_file(root, "00000000000000bb", 1, records)  # the layout before destinations

    result = agent({**agent_env, "CMBAGENT_COLLECTOR_URL": collector.url}, "deliver_spool")
    assert "left=[]" in result.stdout and "flushed=True" in result.stdout, result.stdout
    counts = tally(database, uuid.UUID(bytes=run))
    assert counts.stored == 10 and 0 < counts.dropped_for["spool_damaged"] < 90, counts
    assert not damaged.exists() and not whole.exists()
    assert all(path.read_bytes() == b"not ours" for path in foreign)
    assert flat.exists() and "predate per-collector spool directories" in result.stderr


def test_spooled_frames_go_only_to_the_collector_they_were_meant_for(
        database: str, tmp_path: Path, agent_env: dict[str, str]) -> None:
    meant_for = CollectorProcess(database, tmp_path / "meant-for", extra=("--no-migrate",))
    other = CollectorProcess(database, tmp_path / "other", extra=("--no-migrate",)).start()
    output = agent({**agent_env, "CMBAGENT_COLLECTOR_URL": meant_for.url},
                   "emit_and_exit", "500").stdout
    _deliver_spool({**agent_env, "CMBAGENT_COLLECTOR_URL": other.url})
    assert tally(database, run_id(output)).stored == 0

    meant_for.start()
    _deliver_spool({**agent_env, "CMBAGENT_COLLECTOR_URL": meant_for.url})
    _assert_accounted(database, run_id(output), 500)
    for collector in (meant_for, other):
        collector.kill()


def test_a_frame_the_collector_refuses_is_given_up_and_counted(
        database: str, collector: CollectorProcess, agent_env: dict[str, str]) -> None:
    # A spooled frame of more records than the collector takes in one frame (10,000): it is
    # refused whole, every time. The shim stops resending it, deletes it and counts its events.
    spool = Path(agent_env["CMBAGENT_SPOOL_DIR"]) / destination_key((collector.url,))
    spool.mkdir(parents=True)
    run, records = good_records(10_001)
    is_event = [msgpack.unpackb(r)["k"] == "event" for r in records]
    # The session's and the run's records are delivered; the events come in the refused frame.
    paired = list(zip(records, is_event, strict=True))
    _frame_file(spool, "00000000000000aa", 1, [r for r, e in paired if not e])
    refused = _frame_file(spool, "00000000000000aa", 2, [r for r, e in paired if e])

    _deliver_spool({**agent_env, "CMBAGENT_COLLECTOR_URL": collector.url})
    counts = tally(database, uuid.UUID(bytes=run))
    assert (counts.stored, counts.dropped_for) == (0, {"refused": 10_001}), counts
    assert not refused.exists()


def test_a_frame_never_acknowledged_while_others_are_is_given_up_and_counted(
        agent_env: dict[str, str]) -> None:
    # A collector that ignores one frame (as one that predates the refused reply does with a
    # frame it cannot read) and acknowledges the rest: the frame is resent a few times, then
    # given up; its events are counted, and the counts travel in later frames' headers.
    context = zmq.Context()
    collector = context.socket(zmq.ROUTER)
    port = collector.bind_to_random_port("tcp://127.0.0.1")
    env = {**agent_env, "CMBAGENT_COLLECTOR_URL": f"tcp://127.0.0.1:{port}",
           "CMBAGENT_ACK_TIMEOUT": "0.2"}
    running = agent(env, "emit", "5000", "0.03", "10", wait=False)
    ignored: bytes | None = None
    times_ignored, ignored_events = 0, 0
    reported: list[list[Any]] = []
    try:
        while running.poll() is None:
            if not collector.poll(100):
                continue
            identity, frame = collector.recv_multipart()
            _, batch_id, header, records = decode_frame(frame)
            # Drops are counted per run: all but the session record. The first frame with
            # such records is ignored (the sender thread may have sent the session alone).
            counted = sum(r["k"] != "session" for r in records)
            if batch_id == ignored or (ignored is None and counted):
                ignored, ignored_events = batch_id, counted
                times_ignored += 1
                continue
            reported = header["drops"] or reported
            collector.send_multipart([identity, encode_reply(ACK, [batch_id])])
    finally:
        collector.close(linger=0)
        context.term()
    output, errors = running.communicate()
    assert "flushed=False" in output, output + errors  # an event of its own was given up
    assert 2 <= times_ignored <= 7, times_ignored
    assert [[reason, count] for _, reason, count in reported] == [
        ["unacknowledged", ignored_events]], reported
