"""One daemon per log directory: an ``flock`` on ``daemon.lock`` holding the owner's pid.

The kernel drops the lock when its holder dies, however it dies, so a stale
lock file never blocks a new daemon; the pid inside only names the holder.
"""

from __future__ import annotations

import fcntl
import os

from persist.daemon.store import LogDir


class AlreadyRunning(RuntimeError):
    """Another process holds the log directory's lock."""


def holder_pid(log: LogDir) -> int | None:
    """The pid written by the process that holds (or last held) the lock."""
    try:
        return int(log.lock_file.read_text().strip() or 0) or None
    except (FileNotFoundError, ValueError):
        return None


def is_locked(log: LogDir) -> bool:
    """True while some process holds the lock (a daemon is recording)."""
    try:
        fd = os.open(log.lock_file, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def acquire(log: LogDir) -> int:
    """Take the lock for this process; return the fd that keeps it."""
    fd = os.open(log.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        pid = holder_pid(log)
        who = f"pid {pid}" if pid else "another process"
        raise AlreadyRunning(
            f"another persist-daemon ({who}) is already recording into {log.root}; "
            "stop it first or choose another --log-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
