"""The local spool: frames that could not be delivered yet, one file each, bounded in bytes.

Layout of the spool directory (``CMBAGENT_SPOOL_DIR``, default
``~/.local/state/cmbagent-tracking/spool``)::

    <sender>.lock                 held (flock) by the live process that owns <sender>'s frames
    <sender>-<seq:016x>.frame     one encoded wire frame, exactly as it is sent

A frame file is deleted once the collector has acknowledged it. Frames whose owner is gone (its
lock is free) are *adopted* by the next process that starts a sender with the same spool
directory, which delivers them; redelivery is harmless because the collector stores each event
once. The byte bound (``CMBAGENT_SPOOL_MAX_BYTES``, default 512 MiB) is checked against the
directory's size as this process sees it; past it, frames are dropped and counted.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections import deque
from pathlib import Path

log = logging.getLogger(__name__)


class Spool:
    """One process's view of the spool directory. Used only from the sender thread."""

    def __init__(self, directory: Path, max_bytes: int, owner: str) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.owner = owner
        self._lock_fd: int | None = None
        self._adopted_locks: dict[str, int] = {}
        self._size: int | None = None

    def put(self, seq: int, frame: bytes, *, bounded: bool = True) -> Path | None:
        """Write a frame; ``None`` if the bound is reached or the disk refuses.

        ``bounded=False`` is for the last, records-free frame that carries the drop counts.
        """
        try:
            size = self._current_size()
            if bounded and size + len(frame) > self.max_bytes:
                return None
            self._hold_own_lock()
            path = self.directory / f"{self.owner}-{seq:016x}.frame"
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(frame)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot write to the spool %s: %s", self.directory, exc)
            return None
        self._size = size + len(frame)
        return path

    def remove(self, path: Path) -> None:
        try:
            size = path.stat().st_size
            path.unlink()
        except OSError:
            return
        if self._size is not None:
            self._size = max(0, self._size - size)

    def adopt(self) -> deque[Path]:
        """Frames left by processes that are gone, oldest first; their locks are now ours."""
        frames: deque[Path] = deque()
        try:
            names = sorted(os.listdir(self.directory))
        except OSError:
            return frames
        owners = {n.split("-", 1)[0] for n in names if n.endswith(".frame")}
        for owner in sorted(owners - {self.owner} - set(self._adopted_locks)):
            fd = self._try_lock(owner)
            if fd is None:
                continue  # its process is alive and will deliver them itself
            self._adopted_locks[owner] = fd
            frames.extend(self.directory / n for n in names
                          if n.startswith(f"{owner}-") and n.endswith(".frame"))
        if frames:
            log.info("delivering %d spooled frames left by earlier processes", len(frames))
        return frames

    def close(self) -> None:
        """Release our locks; lock files of owners with no frames left are removed."""
        for owner, fd in [(self.owner, self._lock_fd), *self._adopted_locks.items()]:
            if fd is None:
                continue
            try:
                if not any(self.directory.glob(f"{owner}-*.frame")):
                    (self.directory / f"{owner}.lock").unlink(missing_ok=True)
            except OSError:
                pass
            os.close(fd)
        self._lock_fd = None
        self._adopted_locks.clear()

    def _current_size(self) -> int:
        if self._size is None:
            try:
                self._size = sum(
                    e.stat().st_size for e in os.scandir(self.directory) if e.name.endswith(".frame")
                )
            except OSError:
                self._size = 0
        return self._size

    def _hold_own_lock(self) -> None:
        if self._lock_fd is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd = self._try_lock(self.owner)
            if self._lock_fd is None:
                raise OSError(f"lock {self.owner}.lock is held by another process")

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
