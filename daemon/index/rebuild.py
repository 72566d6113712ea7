"""``index rebuild``: a new search index built beside the old one and swapped in whole.

Readers never see a half-built index: the new one is written to
``index.sqlite.rebuild`` while a running indexer is paused (``indexer.lock``)
and then copied over the old one with SQLite's backup API, in one transaction,
so a search meanwhile answers from the old, complete index. Only an index
that cannot be opened at all is replaced by renaming the new file over it
(flushed to disk first, and the directory after).

The new file is derived data no one reads before it is complete, so it is
built the quick way: no journal and no syncing until it is whole, in one
transaction, the secondary indexes made once at the end, FTS5 holding more
words in memory between flushes and merging less as it goes (its settings
put back before the swap). The log is read and each batch's rows made on a
second thread, handed over as JSON that SQLite unpacks itself
(``json_each``): inserting a batch is then one statement during which SQLite
holds no lock on the interpreter, so both cores work.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson

from persist.daemon.index import (
    COLUMNS,
    FTS_COLUMNS,
    Item,
    ahead,
    connect,
    files,
    forget_deleted,
    give_back,
    index_path,
    pending,
    put,
    resume_after,
    rows_of,
    take_indexer_lock,
)
from persist.daemon.log import reader
from persist.daemon.log.errors import SearchIndexError
from persist.daemon.log.layout import LogDir

BATCH = 5000
# FTS5 settings while the new index is built: flush the words held in memory every 32 MiB rather than every
# 1 MiB, and merge word lists once 16 of a level exist rather than 4 (fewer, larger merges); both are
# removed again, so the index the indexer then keeps is configured as every other.
BUILD_FTS = (("hashsize", 32 << 20), ("automerge", 16))
_RECORDS = (f"INSERT INTO records ({COLUMNS}) SELECT "
            + ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(COLUMNS.split(","))))
            + " FROM json_each(CAST(? AS TEXT))")
_WORDS = (f"INSERT INTO fts({FTS_COLUMNS}) SELECT "
          + ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(FTS_COLUMNS.split(","))))
          + " FROM json_each(CAST(? AS TEXT))")
NUL = b"\\u0000"  # SQLite's JSON functions end a string at an escaped NUL: such a batch goes the slow way
JSON_MAX = 256 << 20  # bytes of one batch as JSON (SQLite takes values up to 1 GB)


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
            count = build(log, new, progress and (lambda seg, off: progress(starts.get(seg, 0) + off)))
            new.execute("VACUUM")  # the pages FTS5 freed while merging its word lists are not copied in
            new.execute("PRAGMA journal_mode=WAL")  # as every index is kept
            _swap_in(new, path, fresh)
        finally:
            new.close()
        return count
    finally:
        for p in files(fresh):
            p.unlink(missing_ok=True)
        give_back(log)
        os.close(lock_fd)


def build(log: LogDir, db: sqlite3.Connection, progress: Callable[[str, int], None] | None = None) -> int:
    """Index the whole log into ``db``, a new, empty index no one else reads (it has no journal meanwhile);
    how many records it holds. Rows, words and resume point are those ``catch_up`` would write."""
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    forget_deleted(log, db)
    db.execute("BEGIN IMMEDIATE")
    try:
        indexes = db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'records' "
                             "AND sql IS NOT NULL").fetchall()  # made once at the end: quicker than kept up
        for name, _ in indexes:
            db.execute(f'DROP INDEX "{name}"')
        for key, value in BUILD_FTS:
            db.execute("INSERT INTO fts(fts, rank) VALUES (?, ?)", (key, value))
        count = 0
        for n, batch, last in ahead(_batches(pending(log, db))):
            if isinstance(batch, tuple):
                db.execute(_RECORDS, (batch[0],))  # one statement a batch: SQLite works without the interpreter
                db.execute(_WORDS, (batch[1],))
            else:
                put(db, batch)
            count += n
            if progress:
                progress(last[1], last[2])
        if count:
            resume_after(db, last)
        for _, create in indexes:
            db.execute(create)
        db.execute(f"DELETE FROM fts_config WHERE k IN ({','.join('?' * len(BUILD_FTS))})",
                   [key for key, _ in BUILD_FTS])
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return count


def _batches(items: Iterator[Item]) -> Iterator[tuple[int, tuple[bytes, bytes] | list, Item]]:
    """``(count, rows, last item)`` for each ``BATCH`` items: their rows (``rows_of``) as two JSON arrays, or as
    they are when JSON would not carry them exactly (an escaped NUL, a number past 64 bits, a huge batch) or a
    seq does not follow the one before (``put`` then replaces the row it repeats, as ``catch_up`` does)."""
    batch: list[Item] = []
    after = None  # the highest seq written so far
    for item in items:
        batch.append(item)
        if len(batch) >= BATCH:
            yield _encoded(batch, after)
            top = max(rec["seq"] for rec, *_ in batch)
            after = top if after is None else max(after, top)
            batch = []
    if batch:
        yield _encoded(batch, after)


def _encoded(batch: list[Item], after: int | None) -> tuple[int, tuple[bytes, bytes] | list, Item]:
    pairs = rows_of(batch)
    seqs = [row[0] for row, _ in pairs]
    if (after is None or seqs[0] > after) and all(a < b for a, b in zip(seqs, seqs[1:])):
        try:
            rows = orjson.dumps([row for row, _ in pairs])
            words = orjson.dumps([fts for _, fts in pairs])
        except orjson.JSONEncodeError:
            pass
        else:
            if NUL not in rows and NUL not in words and len(rows) + len(words) < JSON_MAX:
                return len(pairs), (rows, words), batch[-1]
    return len(pairs), pairs, batch[-1]


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
    _fsync(fresh)  # built without syncing: on disk before it is named the index
    for p in files(path)[1:]:
        p.unlink(missing_ok=True)
    os.replace(fresh, path)
    _fsync(path.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
