"""``index rebuild``: a new search index built beside the old one and swapped in whole.

Readers never see a half-built index: the new one is written to
``index.sqlite.rebuild`` while a running indexer is paused (``indexer.lock``)
and then copied over the old one with SQLite's backup API, in one transaction,
so a search meanwhile answers from the old, complete index. Only an index
that cannot be opened at all is replaced by renaming the new file over it.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from persist.daemon.index import catch_up, connect, files, give_back, index_path, take_indexer_lock
from persist.daemon.log import reader
from persist.daemon.log.errors import SearchIndexError
from persist.daemon.log.layout import LogDir


def rebuild(log: LogDir, progress: Callable[[int], None] | None = None, timeout: float = 15.0) -> int:
    """Build the index anew from the JSONL, pausing a running indexer meanwhile; how many records it holds.

    The new index is built beside the old one and copied over it in one transaction (SQLite's backup),
    so a search meanwhile answers from the old, complete index, never from a half-built one; an index
    that cannot be opened is replaced by renaming the new file over it.
    ``progress(bytes)`` is told how far into the whole log (``reader.sizes``) indexing got.
    """
    lock_fd = take_indexer_lock(log, timeout)
    path = index_path(log)
    fresh = path.with_name(path.name + ".rebuild")
    try:
        for p in files(fresh):
            p.unlink(missing_ok=True)
        starts, total = {}, 0  # where each segment begins in the whole log
        for seg, nbytes in reader.sizes(log):
            starts[seg.name] = total
            total += nbytes
        new = connect(fresh)
        try:
            count = catch_up(log, new, progress and (lambda seg, off: progress(starts.get(seg, 0) + off)))
            new.execute("VACUUM")  # the pages FTS5 freed while merging its word lists are not copied in
            _swap_in(new, path, fresh)
        finally:
            new.close()
        return count
    finally:
        for p in files(fresh):
            p.unlink(missing_ok=True)
        give_back(log)
        os.close(lock_fd)


def _swap_in(new: sqlite3.Connection, path: Path, fresh: Path) -> None:
    """Make ``path`` hold what ``new`` (the file ``fresh``) holds, atomically for its readers."""
    try:
        old = connect(path, create=False)
    except (SearchIndexError, sqlite3.DatabaseError):
        old = None
    if old is not None:
        try:
            new.backup(old)
            return
        except sqlite3.DatabaseError:
            pass
        finally:
            old.close()
    new.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for p in files(path)[1:]:
        p.unlink(missing_ok=True)
    os.replace(fresh, path)
