"""A local write-ahead spool: records appended to segment files and made durable before the
caller goes on (what the prediction log writes before a request is answered).

Layout under one spool folder (the prediction log keeps one per use case)::

    <writer>/lock          flock'd by the live process that owns the folder
    <writer>/00000001.seg  records: [u32 length][u32 crc32][payload], appended

``<writer>`` is unique per process start (UTC start time + random), so segment names never
repeat and a segment's name is a stable identity: whatever uploads it can derive one object key
from it, and an upload retried after a crash overwrites itself.

Durability: :meth:`Spool.append` returns once its record is on disk (``fdatasync``, with
``sync=True``) or in the page cache (``sync=False``: survives the process, not the host).
Appends of concurrent threads share one ``fdatasync`` (group commit: whoever finds no sync in
flight syncs for everyone written so far). A segment is closed by :meth:`Spool.rotate`; closed
segments are immutable and removed only by :meth:`Spool.release`, after their upload.

Recovery: a writer killed with SIGKILL leaves its folder, and its ``flock`` dies with it.
:meth:`Spool.claim_orphans` takes every such folder (a live writer's lock is held, so it is
skipped), drops a torn last record (never acknowledged: its append had not returned), and hands
the segments over, oldest first.

Bound: appends beyond ``max_bytes`` of unreleased segments raise :class:`SpoolFull`.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import secrets
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)
HEADER = struct.Struct("<II")  # payload length, crc32 of the payload
SUFFIX = ".seg"
LOCK = "lock"


class SpoolFull(OSError):
    """The spool holds ``max_bytes`` of segments not uploaded yet: the record was not written."""


@dataclass(frozen=True)
class Segment:
    """A closed segment: ``writer`` and ``seq`` name it for good (the object key derives from them)."""

    writer: str
    seq: int
    path: Path
    size: int


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lock(folder: Path) -> int | None:
    """An fd holding ``folder``'s exclusive lock, or None when a live process holds it."""
    try:
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    except FileNotFoundError:  # another writer claimed the folder and removed it meanwhile
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def read_records(path: Path) -> tuple[list[bytes], int]:
    """The intact records of a segment and the length they span (a torn tail ends the list)."""
    data = path.read_bytes()
    records, offset = [], 0
    while offset + HEADER.size <= len(data):
        length, crc = HEADER.unpack_from(data, offset)
        end = offset + HEADER.size + length
        payload = data[offset + HEADER.size:end]
        if end > len(data) or zlib.crc32(payload) != crc:
            break
        records.append(payload)
        offset = end
    return records, offset


class Spool:
    """One process's segments under ``root`` (see the module docstring).

    Raises ``OSError`` when the folder cannot be created or locked.
    """

    def __init__(self, root: Path, *, max_bytes: int, sync: bool = True) -> None:
        self.root, self.max_bytes, self.sync = root, max_bytes, sync
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.writer = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(4)}"
        self.folder = root / self.writer
        self.folder.mkdir(mode=0o700)
        _fsync_dir(root)
        lock = _lock(self.folder)
        assert lock is not None, "a fresh folder is nobody else's"
        self._locks = [lock]  # its own folder's, then each claimed orphan's
        self._cv = threading.Condition()
        self._rotating = threading.Lock()
        self._seq = 0
        self._written = self._synced = 0  # records appended / made durable (group commit)
        self._syncing = False
        self._failed: OSError | None = None
        self._closed = False
        self._held = 0  # bytes of closed or claimed segments not released yet
        self.records = 0  # records in the active segment
        self.syncs = 0  # fdatasync calls (fewer than appends under concurrency: group commit)
        self._seq += 1
        self._fd, self._path = self._create(self._seq)
        self.size = 0
        self.opened_at = time.monotonic()

    # ---- appending ------------------------------------------------------------------------------

    @property
    def disk_bytes(self) -> int:
        """Bytes on disk not released yet (the active segment included)."""
        return self._held + self.size

    def append(self, payload: bytes) -> None:
        """Append one record; returns once it is durable (see the module docstring).

        Raises :class:`SpoolFull` beyond ``max_bytes``, and ``OSError`` when the disk refuses
        (the record is then not in the spool; the next :meth:`rotate` starts a fresh segment).
        """
        frame = HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        with self._cv:
            if self._failed is not None:
                raise OSError(self._failed.errno, f"the spool segment {self._path} failed: {self._failed}")
            if self.disk_bytes + len(frame) > self.max_bytes:
                raise SpoolFull(errno.ENOSPC, f"the spool {self.root} holds {self.disk_bytes} bytes "
                                              f"(max {self.max_bytes}) not uploaded yet")
            self._write(frame)
            self._written += 1
            if self.sync:
                self._sync_through(self._written)

    def _write(self, frame: bytes) -> None:
        try:
            written = os.write(self._fd, frame)
            if written != len(frame):
                raise OSError(errno.ENOSPC, f"short write to {self._path}")
        except OSError as exc:
            os.ftruncate(self._fd, self.size)  # never leave a torn record before later ones
            raise exc
        self.size += len(frame)
        self.records += 1

    def _sync_through(self, mine: int) -> None:
        """Wait (holding the condition) until record ``mine`` is durable, syncing if nobody is."""
        while self._synced < mine:
            if self._failed is not None:
                raise OSError(self._failed.errno, f"fdatasync of {self._path} failed: {self._failed}")
            if self._syncing:
                self._cv.wait()
                continue
            self._syncing, target, fd = True, self._written, self._fd
            self._cv.release()
            try:
                os.fdatasync(fd)  # the GIL is released: other requests append meanwhile
            except OSError as exc:
                self._failed = exc  # fsync errors are not retried (the page cache state is unknown)
            finally:
                self._cv.acquire()
                self._syncing = False
                self._cv.notify_all()
            if self._failed is None:
                self._synced = max(self._synced, target)
                self.syncs += 1

    # ---- segments -------------------------------------------------------------------------------

    def _create(self, seq: int) -> tuple[int, Path]:
        path = self.folder / f"{seq:08d}{SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        _fsync_dir(self.folder)  # the file itself survives a crash, not only its blocks
        return fd, path

    def rotate(self) -> Segment | None:
        """Close the active segment (when it holds records) and start the next; returns the closed
        one, to upload, or None. A segment whose sync failed is closed as it is."""
        with self._rotating:
            with self._cv:
                if self._closed or (not self.records and self._failed is None):
                    return None
                seq = self._seq + 1
            fd_next, path_next = self._create(seq)  # outside the condition: appends go on meanwhile
            with self._cv:
                while self._syncing:
                    self._cv.wait()
                if self.sync and self._failed is None and self._synced < self._written:
                    os.fdatasync(self._fd)
                    self._synced = self._written
                closed = Segment(self.writer, self._seq, self._path, self.size)
                fd = self._fd
                self._fd, self._path, self._seq, self.size, self.records = fd_next, path_next, seq, 0, 0
                self._failed, self._held = None, self._held + closed.size
                self.opened_at = time.monotonic()
                self._cv.notify_all()
            os.close(fd)
            return closed

    def release(self, segment: Segment) -> None:
        """Remove a segment once its upload is confirmed (the only way records leave the spool)."""
        segment.path.unlink(missing_ok=True)
        with self._cv:
            self._held -= segment.size
        if segment.writer != self.writer:
            _remove_if_done(segment.path.parent)

    # ---- recovery -------------------------------------------------------------------------------

    def claim_orphans(self) -> list[Segment]:
        """Segments of writers that died (their lock is free), oldest first, now this spool's to
        upload and release. A torn last record is cut off (its append never returned)."""
        claimed: list[Segment] = []
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and p != self.folder):
            fd = _lock(folder)
            if fd is None:
                continue  # a live writer
            self._locks.append(fd)
            claimed.extend(self._claim(folder))
            _remove_if_done(folder)
        with self._cv:
            self._held += sum(s.size for s in claimed)
        return claimed

    def _claim(self, folder: Path) -> Iterator[Segment]:
        for path in sorted(folder.glob(f"*{SUFFIX}")):
            records, valid = read_records(path)
            size = path.stat().st_size
            if valid < size:
                log.warning("spool segment %s: %d bytes after its last intact record cut off (a write "
                            "the crash interrupted, never acknowledged)", path, size - valid)
                with path.open("r+b") as fh:
                    fh.truncate(valid)
                    os.fsync(fh.fileno())
            if not records:
                path.unlink()
                continue
            yield Segment(folder.name, int(path.stem), path, valid)

    def close(self) -> None:
        """Close the active segment; the folder goes when nothing is left in it, and its lock with
        the process either way (what is left is claimed by the next start)."""
        with self._cv:
            if self._closed:
                return
            while self._syncing:
                self._cv.wait()
            os.close(self._fd)
            self._closed = True
            self._failed = OSError(errno.EBADF, "the spool is closed")  # later appends are refused
            empty = not self.records
        if empty:
            self._path.unlink(missing_ok=True)
        _remove_if_done(self.folder)
        for fd in self._locks:
            os.close(fd)


def _remove_if_done(folder: Path) -> None:
    """Remove a writer's folder once no segment is left in it (its lock file goes with it)."""
    if folder.is_dir() and not any(folder.glob(f"*{SUFFIX}")):
        shutil.rmtree(folder, ignore_errors=True)
