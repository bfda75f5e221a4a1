"""The local spool: what could not be delivered yet, one file each, bounded in bytes.

Layout (``CMBAGENT_SPOOL_DIR``, default ``~/.local/state/cmbagent-tracking/spool``)::

    <destination>/                    0700; one per set of collector URLs (a hash of them), so
                                      frames meant for one collector never reach another
        <sender>.lock                 held (flock) by the live process that owns <sender>'s files
        <sender>.reserve              room kept for that process's last drop counts (a full disk)
        <sender>-<seq:016x>.frame     one encoded wire frame, exactly as it is sent (0600)

``<sender>`` and ``<seq>`` are 16 lowercase hex digits; any other name is foreign and left alone.
A frame file is deleted once the collector has acknowledged it (or refused it for good). Files
whose owner is gone (its lock is free) are *adopted* by the next process that starts a sender
for the same destination, which delivers them; redelivery is harmless because the collector
stores each event once. Frames in the spool directory itself (the layout before destinations)
are not delivered, since their collector is unknown: a warning says where they are.

The byte bound (``CMBAGENT_SPOOL_MAX_BYTES``, default 512 MiB) is checked against the
destination's size as this process sees it; past it, or when the disk refuses, nothing is written
and the caller counts the events as dropped.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: Kept free on disk for the final, records-free frame with the drop counts.
RESERVE_BYTES = 64 * 1024

_FILE = re.compile(r"([0-9a-f]{16})-([0-9a-f]{16})\.frame")
_LEFTOVER = re.compile(r"([0-9a-f]{16})(?:-[0-9a-f]{16}\.tmp|\.reserve)")  # of a killed process


@dataclass(frozen=True)
class SpoolFile:
    """One adopted file: where it is, and the batch id its frame is sent under."""

    path: Path
    batch_id: bytes


def destination_key(urls: tuple[str, ...]) -> str:
    """The subdirectory name for a set of collector URLs (order does not matter)."""
    return hashlib.sha256("\n".join(sorted(urls)).encode()).hexdigest()[:16]


class Spool:
    """One process's view of its destination's spool. Used by one thread at a time."""

    def __init__(self, root: Path, urls: tuple[str, ...], max_bytes: int, owner: str) -> None:
        self.root = root
        self.directory = root / destination_key(urls)
        self.max_bytes = max_bytes
        self.owner = owner
        self._lock_fd: int | None = None
        self._adopted_locks: dict[str, int] = {}
        self._size: int | None = None
        self._refusing = False  # the last write failed

    def put(self, seq: int, data: bytes) -> Path | None:
        """Write a file within the bound; ``None`` if the bound is reached or the disk refuses."""
        try:
            size = self._current_size()
            if size + len(data) > self.max_bytes:
                return None
            self._hold_own_lock()
            path = self._write(self._name(seq), data)
        except OSError as exc:
            if not self._refusing:  # once, not for each frame of a full disk
                log.warning("cannot write to the spool %s: %s; events that do not fit in memory "
                            "are dropped and counted", self.directory, exc)
            self._refusing = True
            return None
        self._refusing = False
        self._size = size + len(data)
        return path

    def put_last(self, seq: int, data: bytes) -> Path | None:
        """Write the last, small frame (the drop counts) past the bound, in the reserved room."""
        try:
            self._hold_own_lock()
            (self.directory / f"{self.owner}.reserve").unlink(missing_ok=True)
            return self._write(self._name(seq), data)
        except OSError as exc:
            log.error("cannot write the drop counts to the spool %s: %s", self.directory, exc)
            return None

    def remove(self, path: Path) -> None:
        try:
            size = path.stat().st_size
            path.unlink()
        except OSError:
            return
        if self._size is not None:
            self._size = max(0, self._size - size)

    def adopt(self) -> deque[SpoolFile]:
        """Files left by processes that are gone, oldest first; their locks are now ours."""
        self._warn_about_flat_layout()
        files: deque[SpoolFile] = deque()
        try:
            names = sorted(os.listdir(self.directory))
        except OSError:
            return files
        matches = [m for m in map(_FILE.fullmatch, names) if m]
        leftovers = [m for m in map(_LEFTOVER.fullmatch, names) if m]
        owners = {m[1] for m in (*matches, *leftovers)} - {self.owner} - set(self._adopted_locks)
        for owner in sorted(owners):
            fd = self._try_lock(owner)
            if fd is None:
                continue  # its process is alive and will deliver them itself
            self._adopted_locks[owner] = fd
            for leftover in leftovers:
                if leftover[1] == owner:
                    with contextlib.suppress(OSError):
                        (self.directory / leftover[0]).unlink()
            files.extend(SpoolFile(self.directory / m[0], bytes.fromhex(m[1] + m[2]))
                         for m in matches if m[1] == owner)
        if files:
            log.info("delivering %d spooled files left by earlier processes", len(files))
        return files

    def close(self) -> None:
        """Release our locks; lock files of owners with no files left are removed."""
        for owner, fd in [(self.owner, self._lock_fd), *self._adopted_locks.items()]:
            if fd is None:
                continue
            try:
                if owner == self.owner:
                    (self.directory / f"{owner}.reserve").unlink(missing_ok=True)
                if not any(self.directory.glob(f"{owner}-*")):
                    (self.directory / f"{owner}.lock").unlink(missing_ok=True)
            except OSError:
                pass
            os.close(fd)
        self._lock_fd = None
        self._adopted_locks.clear()

    def _name(self, seq: int) -> str:
        return f"{self.owner}-{seq:016x}.frame"

    def _write(self, name: str, data: bytes) -> Path:
        """Write atomically (a partial file never appears under ``name``, nor stays behind)."""
        path = self.directory / name
        tmp = path.with_suffix(".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        return path

    def _current_size(self) -> int:
        if self._size is None:
            try:
                self._size = sum(e.stat().st_size for e in os.scandir(self.directory)
                                 if _FILE.fullmatch(e.name))
            except OSError:
                self._size = 0
        return self._size

    def _hold_own_lock(self) -> None:
        if self._lock_fd is not None:
            return
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.directory.mkdir(mode=0o700, exist_ok=True)
        self._lock_fd = self._try_lock(self.owner)
        if self._lock_fd is None:
            raise OSError(f"lock {self.owner}.lock is held by another process")
        self._reserve_room()

    def _reserve_room(self) -> None:
        # A full disk must still take the counts of what it could not take.
        try:
            fd = os.open(self.directory / f"{self.owner}.reserve", os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("cannot reserve room for drop counts in %s: %s", self.directory, exc)

    def _try_lock(self, owner: str) -> int | None:
        try:
            fd = os.open(self.directory / f"{owner}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        return fd

    def _warn_about_flat_layout(self) -> None:
        try:
            old = [n for n in os.listdir(self.root) if _FILE.fullmatch(n)]
        except OSError:
            return
        if old:
            log.warning("%d spooled frames in %s predate per-collector spool directories and are "
                        "not delivered, since their collector is unknown: move them into %s to "
                        "deliver them to this process's collector", len(old), self.root,
                        self.directory)
