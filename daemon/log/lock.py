"""Locks: one daemon per log directory, and the one way persist takes any flock.

The daemon's lock is an ``flock`` on the log dir itself (opened
``O_DIRECTORY``), not on a file in it, so deleting or replacing any file
inside cannot let a second daemon in. The kernel drops a lock when its holder
dies, however it dies, so nothing stale ever blocks a new daemon;
``daemon.lock`` only holds the holder's pid. Other locks (``launcher.lock``,
``indexer.lock``) are files taken with ``try_lock_file``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from persist.daemon.log.fsutil import check_owned, open_private, read_private, write_all
from persist.daemon.log.layout import LogDir


class AlreadyRunning(RuntimeError):
    """Another process holds the log directory's lock."""


class StillRunning(RuntimeError):
    """A lock holder asked to stop did not let go in time."""


def take(fd: int, shared: bool = False) -> bool:
    """Flock ``fd`` without waiting: True once this process holds it; False (``fd`` closed) if another does."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    return True


def try_lock_file(path: Path, wait: float = 0.0, poll: float = 0.02) -> int | None:
    """An fd of ``path`` (created 0600, never through a symlink) holding its exclusive flock.

    None if another process held it for all of ``wait`` seconds (0: one try).
    """
    deadline = time.monotonic() + wait
    while True:
        if take(fd := open_private(path, os.O_RDWR | os.O_CREAT)):
            return fd
        if time.monotonic() >= deadline:
            return None
        time.sleep(poll)


def holder_pid(log: LogDir) -> int | None:
    """The pid noted by the process that holds (or last held) the lock (``daemon.lock``, else ``daemon.pid``)."""
    for note in (log.lock_file, log.pid_file):
        try:
            pid = int(read_private(note).strip() or 0)
        except (OSError, ValueError):
            continue
        if pid:
            return pid
    return None


def _open_dir(log: LogDir) -> int:
    return os.open(log.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def is_locked(log: LogDir) -> bool:
    """True while some process holds the lock (a daemon is recording)."""
    try:
        fd = _open_dir(log)
    except (FileNotFoundError, NotADirectoryError):
        return False
    if not take(fd, shared=True):
        return True
    os.close(fd)
    return False


def acquire(log: LogDir) -> int:
    """Take the lock for this process and note its pid in ``daemon.lock``; return the fd that keeps it.

    Whoever takes it writes in the log dir: ``NotOurs`` if anything there is not this user's.
    """
    check_owned(log.root)
    if not take(fd := _open_dir(log)):
        pid = holder_pid(log)
        who = f"pid {pid}" if pid else "another process"
        raise AlreadyRunning(
            f"another persist-daemon ({who}) is already recording into {log.root}; "
            "stop it first or choose another --log-dir"
        )
    try:
        note = open_private(log.lock_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    except BaseException:
        os.close(fd)
        raise
    try:
        write_all(note, f"{os.getpid()}\n".encode())
    finally:
        os.close(note)
    return fd


@contextlib.contextmanager
def held(log: LogDir) -> Iterator[int]:
    """``acquire`` for a ``with`` block: no daemon may start in ``log`` until it ends."""
    fd = acquire(log)
    try:
        yield fd
    finally:
        os.close(fd)


def stop_holder(log: LogDir, timeout: float = 15.0) -> None:
    """SIGTERM the daemon that holds ``log``'s lock and wait until the lock is free (``StillRunning`` if not)."""
    pid = holder_pid(log)
    if pid is None:
        raise StillRunning(f"a process holds the lock on {log.root} but its pid is unknown; stop it by hand")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while is_locked(log):
        if time.monotonic() > deadline:
            raise StillRunning(f"the daemon (pid {pid}) did not stop within {timeout:.0f} s")
        time.sleep(0.1)
