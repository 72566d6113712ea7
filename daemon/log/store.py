"""The durable write path: the writer's durability steps, each named for the guarantee it gives:

* ``append``  — whole lines reach the active segment, or none of them do
  (a short or failed write is cut back to the last whole record);
* ``commit``  — fsync: what was appended survives power loss (in the loop's
  own time, or on a thread of its own so the loop goes on receiving while
  the disk works: a group commit);
* ``rotate``  — the active segment becomes an immutable file in ``segments/``;
* ``repair_tail`` — after a crash, a torn last line is quarantined in
  ``recovery/`` and the file cut back to its last whole record.

It never decides *what* to write (``record`` does) and never reads for users
(``reader`` does).
"""

from __future__ import annotations

import errno
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from persist.daemon.log.entry import entry
from persist.daemon.log.fsutil import FILE_MODE, ensure_dir, fsync_dir, last_newline, write_all, write_atomically
from persist.daemon.log.layout import LogDir, segment_name

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DiskFull(OSError):
    """The disk refused an append; nothing partial was left in the file."""


class FsyncFailed(OSError):
    """fsync failed: the kernel may have dropped pages, so it must not be retried."""


@dataclass
class Repair:
    """What ``repair_tail`` cut from a file."""

    path: Path
    quarantined: Path
    bytes: int
    lines: int


def repair_tail(path: Path, recovery: Path) -> Repair | None:
    """Cut ``path`` back to its last whole record; move what follows to ``recovery/``.

    A crash can leave a partial last line (or, after power loss, garbage such
    as zeros). Those bytes are quarantined, never deleted.
    """
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    try:
        size = os.fstat(fd).st_size
        good = last_newline(fd, size)
        lines = 1 if good < size else 0
        while good > 0:
            start = last_newline(fd, good - 1)
            if entry(os.pread(fd, good - start, start), path) is not None:
                break
            good, lines = start, lines + 1
        if good == size:
            return None
        torn = os.pread(fd, size - good, good)
        ensure_dir(recovery)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        quarantined = recovery / f"torn-{path.stem}-{stamp}-{good}.bin"
        write_atomically(quarantined, torn)
        os.ftruncate(fd, good)
        os.fsync(fd)
        return Repair(path, quarantined, size - good, lines)
    finally:
        os.close(fd)


def fdatasync(fd: int, path: Path) -> None:
    """fsync the data of ``fd``; a failure is ``FsyncFailed``, naming ``path``."""
    try:
        os.fdatasync(fd)
    except OSError as exc:
        raise FsyncFailed(exc.errno, f"fsync of {path} failed: {exc.strerror}") from None


class BackgroundSync:
    """fdatasync on a thread of its own, one at a time; requests made meanwhile merge.

    ``done`` is the mark of the last request whose fsync finished. A failed
    fsync is kept and raised (as ``FsyncFailed``) to the loop at its next
    request or wait: it must not be retried.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.cond = threading.Condition()
        self.wanted: tuple[int, int] | None = None  # (fd, mark) for the next fsync
        self.busy = False
        self.done = 0
        self.error: FsyncFailed | None = None
        self.thread: threading.Thread | None = None

    def request(self, fd: int, mark: int) -> None:
        with self.cond:
            self._raise_error()
            self.wanted = (fd, mark)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="persist-fsync", daemon=True)
                self.thread.start()
            self.cond.notify_all()

    def wait(self) -> None:
        """Until every requested fsync has finished (then the fd may be closed)."""
        with self.cond:
            while self.busy or self.wanted is not None:
                self.cond.wait()
            self._raise_error()

    def _raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        while True:
            with self.cond:
                while self.wanted is None:
                    self.cond.wait()
                (fd, mark), self.wanted, self.busy = self.wanted, None, True
            error = None
            try:
                fdatasync(fd, self.path)
            except FsyncFailed as exc:
                error = exc
            with self.cond:
                self.busy = False
                if error is None:
                    self.done = mark
                else:
                    self.error = self.error or error
                self.cond.notify_all()


class SegmentWriter:
    """Appends record lines to the active segment; commits and rotates it."""

    def __init__(self, log: LogDir, fsync: str = "batch") -> None:
        self.log = log
        self.fsync = fsync
        self.fd = -1
        self.size = 0
        self.opened_at = time.time()
        self.first_seq: int | None = None
        self.uncommitted = 0
        self.synced = 0  # the mark of the last commit finished in the loop's own time
        self.background = BackgroundSync(log.active)

    def open(self, first_seq: int | None = None, first_time: float | None = None) -> None:
        """Open (or create) the active segment for appending.

        ``first_seq``/``first_time`` describe its first record if it has one;
        the segment's age for rotation counts from that record.
        """
        self.fd = os.open(self.log.active, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
        self.size = os.fstat(self.fd).st_size
        self.opened_at = first_time if first_time is not None else time.time()
        self.first_seq = first_seq
        fsync_dir(self.log.root)

    def append(self, data: bytes) -> None:
        """Write whole lines; on any failure cut the file back so no partial line stays."""
        try:
            write_all(self.fd, data)
        except OSError as exc:
            os.ftruncate(self.fd, self.size)
            if exc.errno in DISK_FULL_ERRNOS:
                raise DiskFull(exc.errno, f"{exc.strerror}: {self.log.active}") from None
            raise
        if self.first_seq is None:  # the segment's first record names it at rotation
            self.first_seq, self.opened_at = orjson.loads(data[: data.index(b"\n")])["seq"], time.time()
        self.size += len(data)
        self.uncommitted += 1

    def append_fitting(self, lines: list[bytes], chunk_bytes: int = 1 << 20) -> int:
        """Append as many of ``lines`` as the disk takes, in order; return how many were written.

        After a full disk, a little space back is a little recorded: chunks
        that do not fit are halved down to a single line before giving up.
        """
        written = 0
        while written < len(lines):
            end, size = written, 0
            while end < len(lines) and (end == written or size + len(lines[end]) <= chunk_bytes):
                size += len(lines[end])
                end += 1
            try:
                self.append(b"".join(lines[written:end]))
            except DiskFull:
                if end - written == 1:
                    return written
                chunk_bytes = max(1, size // 2)
                continue
            written = end
        return written

    def commit(self, mark: int = 0, wait: bool = True) -> None:
        """fsync what was appended (unless ``--fsync off``); ``durable`` reaches ``mark`` once done.

        ``wait=False`` hands the fsync to the background thread and returns at once.
        """
        if self.fsync == "off":
            self.synced = max(self.synced, mark)
        elif self.uncommitted and not wait:
            self.background.request(self.fd, mark)
        else:
            self.background.wait()  # never two fsyncs at once, never one on a closed fd
            if self.uncommitted:
                fdatasync(self.fd, self.log.active)
                self.synced = max(self.synced, mark)
        self.uncommitted = 0

    @property
    def durable(self) -> int:
        """The highest mark whose commit has finished."""
        return max(self.synced, self.background.done)

    def rotate(self) -> Path | None:
        """Close the active segment into ``segments/`` and start a new one."""
        if self.first_seq is None:
            return None
        self.commit()
        os.fsync(self.fd)
        os.close(self.fd)
        closed = self.log.segments / segment_name(self.first_seq)
        os.rename(self.log.active, closed)
        fsync_dir(self.log.segments)
        self.open()
        return closed

    def should_rotate(self, max_bytes: int, max_age: float, now: float) -> bool:
        return self.first_seq is not None and (self.size >= max_bytes or now - self.opened_at >= max_age)

    def close(self) -> None:
        if self.fd >= 0:
            self.commit()
            os.close(self.fd)
            self.fd = -1
