"""Who may write the search index: ``indexer.lock``, whose pid is in it, and pausing a running indexer.

One indexer per log dir: the daemon's indexer process, or a command that
brings the index up to date (``search`` when no indexer runs, ``index
rebuild``, ``recover``). A pid read from the lock file is believed only if
that process really holds the flock and is a persist indexer: a stale pid
reused by an unrelated process is never named, never signalled.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from persist.daemon.log.errors import SearchIndexError
from persist.daemon.log.fsutil import ensure_dir
from persist.daemon.log.layout import LogDir
from persist.daemon.log.lock import try_lock_file

INDEXER_MODULE = b"persist.daemon.index.indexer"


def lock_path(log: LogDir) -> Path:
    return log.index / "indexer.lock"


def try_indexer_lock(log: LogDir) -> int | None:
    """An fd holding ``indexer.lock`` (one indexer per log dir), or None if someone else holds it."""
    ensure_dir(log.index)
    return try_lock_file(lock_path(log))


def indexer_pid(log: LogDir) -> int | None:
    """The pid of the persist indexer holding ``indexer.lock`` now, or None.

    The pid in the file is believed only if that process holds an flock on
    the file (``/proc/locks``) and runs ``persist.daemon.index.indexer``.
    """
    path = lock_path(log)
    try:
        pid = int(path.read_text().strip() or 0)
        inode = path.stat().st_ino
        holders = Path("/proc/locks").read_text().splitlines()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes() if pid > 0 else b""
    except (OSError, ValueError):
        return None
    held = any(f[1] == "FLOCK" and f[4] == str(pid) and f[5].rsplit(":", 1)[-1] == str(inode)
               for f in (line.split() for line in holders) if len(f) > 5)
    return pid if held and INDEXER_MODULE in cmdline else None


def give_back(log: LogDir) -> None:
    """Run as root on a log dir that is not root's (``sudo persist-cli search`` on the service's log):
    hand ``metadata_index/`` and what is in it to the log dir's owner, so the service's indexer can still
    write them and its daemon still finds everything in its log dir its own. A no-op for anyone else."""
    if os.geteuid() != 0:
        return
    try:
        owner = os.stat(log.root)
    except OSError:
        return
    if owner.st_uid == 0:
        return
    paths = [log.index, *log.index.iterdir()] if log.index.is_dir() else []
    for p in paths:
        try:
            st = os.lstat(p)
            if (st.st_uid, st.st_gid) != (owner.st_uid, owner.st_gid):
                os.chown(p, owner.st_uid, owner.st_gid, follow_symlinks=False)
        except FileNotFoundError:
            pass


def take_indexer_lock(log: LogDir, timeout: float = 15.0) -> int:
    """Hold ``indexer.lock``, asking a running indexer to stop first (the daemon restarts it later).

    ``SearchIndexError`` if the lock is not free within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    asked = False
    while (fd := try_indexer_lock(log)) is None:
        pid = indexer_pid(log)
        if pid and not asked:
            os.kill(pid, signal.SIGTERM)
            asked = True
        if time.monotonic() > deadline:
            raise SearchIndexError(f"{lock_path(log)} is held by {'the indexer (pid %d)' % pid if pid else 'another process'} "
                                   f"and was not released within {timeout:.0f} s; try again")
        time.sleep(0.05)
    return fd
