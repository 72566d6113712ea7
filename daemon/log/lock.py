"""One daemon per log directory: an ``flock`` on the directory itself; ``daemon.lock`` names the holder.

The lock is taken on the log dir (opened ``O_DIRECTORY``), not on a file in
it, so deleting or replacing any file inside cannot let a second daemon in.
The kernel drops the lock when its holder dies, however it dies, so nothing
stale ever blocks a new daemon; ``daemon.lock`` only holds the holder's pid.
"""

from __future__ import annotations

import fcntl
import os

from persist.daemon.log.fsutil import check_owned, open_private, read_private
from persist.daemon.log.layout import LogDir


class AlreadyRunning(RuntimeError):
    """Another process holds the log directory's lock."""


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
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def acquire(log: LogDir) -> int:
    """Take the lock for this process and note its pid in ``daemon.lock``; return the fd that keeps it.

    Whoever takes it writes in the log dir: ``NotOurs`` if anything there is not this user's.
    """
    check_owned(log.root)
    fd = _open_dir(log)
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
    try:
        note = open_private(log.lock_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    except BaseException:
        os.close(fd)
        raise
    try:
        os.write(note, f"{os.getpid()}\n".encode())
    finally:
        os.close(note)
    return fd
