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
removed again before the swap). Two cores work at once: a second thread reads
the log, makes each batch's rows, writes the ``records`` rows into a file of
their own (``index.sqlite.rebuild-rows``, copied in page by page at the end)
and hands the words over as JSON that SQLite unpacks itself (``json_each``),
so indexing a batch's words is one statement during which SQLite holds no
lock on the interpreter. A log whose seqs do not always grow is indexed the
way ``catch_up`` indexes it (a seq met again replaces the row before).
"""

from __future__ import annotations

import contextlib
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
    catch_up,
    connect,
    files,
    forget_deleted,
    give_back,
    index_path,
    pending,
    resume_after,
    rows_of,
    take_indexer_lock,
)
from persist.daemon.log import reader
from persist.daemon.log.errors import SearchIndexError
from persist.daemon.log.layout import LogDir

BATCH = 5000
# FTS5 settings while the new index is built: write the words it holds in memory out once a batch (at the end of
# its statement) rather than each time they pass 1 MiB, and merge word lists once 16 of a level exist rather than
# 4 (fewer, larger merges): 25 % less work for SQLite. Both are removed again, so the index the indexer then
# keeps is configured as every other.
BUILD_FTS = (("hashsize", 32 << 20), ("automerge", 16))
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
    rows = path.with_name(path.name + ".rebuild-rows")
    try:
        starts, total = {}, 0  # where each segment begins in the whole log
        for seg, nbytes in reader.sizes(log):
            starts[seg.name] = total
            total += nbytes
        told = progress and (lambda seg, off: progress(starts.get(seg, 0) + off))
        try:
            return _made(path, fresh, rows, lambda new: build(log, new, rows, told))
        except OutOfOrder:  # indexed as catch_up indexes it: a seq met again replaces the row before
            return _made(path, fresh, rows, lambda new: catch_up(log, new, told))
    finally:
        for p in (*files(fresh), rows):
            p.unlink(missing_ok=True)
        give_back(log)
        os.close(lock_fd)


def _made(path: Path, fresh: Path, rows: Path, make: Callable[[sqlite3.Connection], int]) -> int:
    """``make`` the index in a new file ``fresh`` and swap it in at ``path``; how many records it holds."""
    for p in (*files(fresh), rows):
        p.unlink(missing_ok=True)
    new = connect(fresh)
    try:
        count = make(new)
        new.execute("PRAGMA journal_mode=WAL")  # as every index is kept
        _swap_in(new, path, fresh)
        return count
    finally:
        new.close()


class OutOfOrder(Exception):
    """A record's seq is not above every seq read before it."""


def build(log: LogDir, db: sqlite3.Connection, rows: Path, progress: Callable[[str, int], None] | None = None) -> int:
    """Index the whole log into ``db``, a new, empty index no one else reads (it has no journal meanwhile);
    how many records it holds. Rows, words and resume point are those ``catch_up`` would write; ``OutOfOrder``
    if a seq does not grow.

    The thread making the rows writes the ``records`` rows itself, into a file of their own (``rows``), and
    hands each batch's words to this one as JSON; the rows are copied in at the end, page by page."""
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    forget_deleted(log, db)
    indexes = db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'records' "
                         "AND sql IS NOT NULL").fetchall()  # made once at the end: quicker than kept up
    for name, _ in indexes:
        db.execute(f'DROP INDEX "{name}"')
    table = db.execute("SELECT sql FROM sqlite_master WHERE name = 'records'").fetchone()[0]
    old_umask = os.umask(0o077)  # the rows hold senders and topics: private, as the index is
    try:
        db.execute("ATTACH ? AS rows", (str(rows),))
    finally:
        os.umask(old_umask)
    try:
        db.execute(table.replace("CREATE TABLE records", "CREATE TABLE rows.records", 1))
        db.execute("BEGIN")
        try:
            for key, value in BUILD_FTS:
                db.execute("INSERT INTO fts(fts, rank) VALUES (?, ?)", (key, value))
            count = 0
            for n, words, last in ahead(_batches(pending(log, db), rows)):
                if isinstance(words, bytes):
                    db.execute(_WORDS, (words,))  # one statement a batch: SQLite works without the interpreter
                else:
                    db.executemany(f"INSERT INTO fts({FTS_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", words)
                count += n
                if progress:
                    progress(last[1], last[2])
            db.execute("INSERT INTO main.records SELECT * FROM rows.records")  # the same table: copied page by page
            if count:
                resume_after(db, last)
            for _, create in indexes:
                db.execute(create)
            db.execute(f"DELETE FROM fts_config WHERE k IN ({','.join('?' * len(BUILD_FTS))})",
                       [key for key, _ in BUILD_FTS])
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):  # the file is thrown away: its error is not the one to tell
                db.execute("ROLLBACK")
            raise
    finally:
        with contextlib.suppress(sqlite3.Error):
            db.execute("DETACH rows")
    return count


def _batches(items: Iterator[Item], rows: Path) -> Iterator[tuple[int, bytes | list, Item]]:
    """``(count, words, last item)`` for each ``BATCH`` items, their ``records`` rows (``rows_of``) written into
    the file ``rows`` meanwhile; the words are one JSON array, or the rows of ``rows_of`` as they are when JSON
    would not carry them exactly (an escaped NUL, a number past 64 bits, a huge batch)."""
    db = sqlite3.connect(rows, isolation_level=None, check_same_thread=False)  # closed by whichever thread ends
    try:
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        db.execute("BEGIN")
        batch: list[Item] = []
        after = None  # the highest seq so far
        for item in items:
            seq = item[0]["seq"]
            if after is not None and seq <= after:
                raise OutOfOrder(seq)
            after = seq
            batch.append(item)
            if len(batch) >= BATCH:
                yield _written(db, batch)
                batch = []
        if batch:
            yield _written(db, batch)
        db.execute("COMMIT")
    finally:
        db.close()


def _written(db: sqlite3.Connection, batch: list[Item]) -> tuple[int, bytes | list, Item]:
    pairs = rows_of(batch)
    db.executemany(f"INSERT INTO records ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", [row for row, _ in pairs])
    words = [fts for _, fts in pairs]
    try:
        data = orjson.dumps(words)
    except orjson.JSONEncodeError:
        return len(pairs), words, batch[-1]
    return len(pairs), data if NUL not in data and len(data) < JSON_MAX else words, batch[-1]


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
