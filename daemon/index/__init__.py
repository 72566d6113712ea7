"""The search index: SQLite with FTS5 in ``metadata_index/index.sqlite``.

Derived data only: it can be deleted and rebuilt from the JSONL at any time.
Each record is a row keyed by its ``seq`` (so indexing twice never duplicates),
with its enriched fields, where its line lives (segment and byte offset, to
print the record exactly as written), and its words in an FTS5 table. The FTS5
table keeps no copy of the text: its content is the view ``fts_source``, whose
text columns ``persist_text(segment, offset, column)`` reads back from the
JSONL (a function every connection made by ``connect`` has), so the index
holds little more than its word lists, and a snippet is cut from the log
itself. The ``state`` table remembers how far indexing got (last seq,
segment, offset), in the same transaction as the rows, so an indexer killed at
any moment resumes exactly where its last commit ended.

This module owns the schema and catch-up (``connect``, ``add``, ``catch_up``,
``update``, ``open_current``/``open_complete``, ``behind``); ``rebuild`` a new index swapped in whole; ``search`` the queries and
reading hits back from the JSONL; ``lock`` who may write the index;
``indexer`` the process that keeps it current while the daemon records.
"""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from persist.daemon.index.lock import give_back, indexer_pid, take_indexer_lock, try_indexer_lock  # noqa: F401 (API)
from persist.daemon.index.search import entries, line_at  # noqa: F401 (API)
from persist.daemon.log import envelope, reader, retention
from persist.daemon.log.errors import SearchIndexError
from persist.daemon.log.layout import LogDir
from persist.daemon.log.lazylog import get_logger
from persist.daemon.log.record import is_system
from persist.daemon.log.render import payload_text

SCHEMA = """
PRAGMA journal_mode=WAL;
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY, received_at TEXT NOT NULL, topic TEXT NOT NULL,
    sender TEXT, recipient TEXT, thread_id TEXT, kind TEXT, tags TEXT, tokens INTEGER,
    segment TEXT NOT NULL, offset INTEGER NOT NULL, replay_of INTEGER, own INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS records_thread ON records(thread_id, seq);
CREATE INDEX IF NOT EXISTS records_topic_sender ON records(topic, sender);  -- info counts without a table scan
CREATE VIEW IF NOT EXISTS fts_source AS SELECT seq, persist_text(segment, offset, 0) AS text,
    persist_text(segment, offset, 1) AS fields, sender, recipient, topic, thread_id, kind, tags FROM records;
CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(
    text, fields, sender, recipient, topic, thread_id, kind, tags, tokenize='unicode61',
    content='fts_source', content_rowid='seq');
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value);
"""
# An index whose FTS5 table holds its own copy of the text (persist before the view) is made again from the log.
OLD_FTS = "SELECT 1 FROM sqlite_master WHERE name = 'fts' AND sql NOT LIKE '%fts_source%'"
FIELDS = ("sender", "recipient", "thread_id", "kind")  # also spelt out in _row
COLUMNS = "seq, received_at, topic, sender, recipient, thread_id, kind, tags, tokens, segment, offset, replay_of, own"
FTS_COLUMNS = "rowid, text, fields, sender, recipient, topic, thread_id, kind, tags"  # a row of rows_of's words
ADDED_COLUMNS = {  # columns an index made by an older persist lacks: (definition, how to fill its rows)
    "replay_of": ("INTEGER", None),
    "own": ("INTEGER NOT NULL DEFAULT 0", "UPDATE records SET own = 1 WHERE topic LIKE '$persist/%'"),
}
INT64 = range(-(2**63), 2**63)
T = TypeVar("T")
STALE_SHARE = 0.25  # words of deleted records the FTS5 table may keep, as a share of its rows, before it is remade
MAX_TEXT = 16 << 20  # characters of one record's text that are searchable (SQLite refuses a value over 1 GB)
log = get_logger("persist.index")


def index_dir(log: LogDir) -> Path:
    return log.index


def index_path(log: LogDir) -> Path:
    return index_dir(log) / "index.sqlite"


def files(path: Path) -> tuple[Path, Path, Path]:
    """The index and the ``-wal``/``-shm`` files SQLite keeps beside it."""
    return path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


def open_current(log: LogDir, wait: float = 2.0) -> sqlite3.Connection:
    """The search index, complete up to the newest record, or as near as an indexer at work got (``open_complete``)."""
    return open_complete(log, wait)[0]


def open_complete(log: LogDir, wait: float = 2.0) -> tuple[sqlite3.Connection, int]:
    """``(index, missing)``: the search index, and how many of the records there were when it was called
    it does not hold yet (0: it answers for everything recorded until then).

    When no indexer is at work (the daemon stopped, its indexing off, right after a restore set the index
    aside) this brings the index up to date itself, creating it if missing, holding ``indexer.lock``.
    Otherwise it waits up to ``wait`` seconds for the indexer to reach the record that was newest when it
    was called and, while an indexer is only now making the index, for the file to appear
    (``SearchIndexError`` saying so if it does not).
    """
    path = index_path(log)
    target = _last_seq(log)
    deadline = time.monotonic() + wait
    while True:
        fd = try_indexer_lock(log)
        if fd is not None:
            try:
                db = connect(path)
                catch_up(log, db)
                return db, 0
            finally:
                give_back(log)
                os.close(fd)
        if path.exists():
            db = connect(path, create=False)
            give_back(log)
            while position(db)[0] < target and time.monotonic() < deadline:
                time.sleep(0.05)
            return db, max(0, target - position(db)[0])
        if time.monotonic() >= deadline:
            who = f"the indexer (pid {pid})" if (pid := indexer_pid(log)) else "another persist command"
            raise SearchIndexError(f"{who} is making the search index and has not written it yet "
                                   f"({target} record(s) to index); try again in a moment")
        time.sleep(0.05)


def behind(log: LogDir, db: sqlite3.Connection) -> int:
    """How many records the index has not reached yet (0: it holds everything recorded)."""
    return max(0, _last_seq(log) - position(db)[0])


def _last_seq(log: LogDir) -> int:
    last = reader.last_record(log)
    return last.seq if last is not None else 0


def update(log: LogDir, progress: Callable[[str, int], None] | None = None) -> int:
    """``catch_up`` the index at its place in ``log`` (creating it if missing); how many records were added."""
    db = connect(index_path(log))
    try:
        return catch_up(log, db, progress)
    finally:
        db.close()
        give_back(log)


def connect(path: Path, create: bool = True) -> sqlite3.Connection:
    """Open (creating or upgrading) the index; it and its ``-wal``/``-shm`` files are 0600 (they hold message text)."""
    if not create and not path.exists():
        raise SearchIndexError(f"no search index at {path}; run persist-cli index rebuild (the daemon keeps it current)")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    old_umask = os.umask(0o077)
    try:
        db = sqlite3.connect(path, timeout=30, isolation_level=None)
        db.execute("PRAGMA busy_timeout=30000")
        db.create_function("persist_text", 3, TextFromLog(LogDir(path.parent.parent)), deterministic=True)
        if db.execute(OLD_FTS).fetchone():
            log.info("index_remade", path=str(path), why="this persist keeps no copy of the text in the index")
            db.executescript("DROP TABLE fts; DROP TABLE records; DROP TABLE state; VACUUM;")
        db.executescript(SCHEMA)  # idempotent; also completes a file an indexer has only just created
        have = {row[1] for row in db.execute("PRAGMA table_info(records)")}
        for name, (definition, fill) in ADDED_COLUMNS.items():
            if name not in have:
                db.execute(f"ALTER TABLE records ADD COLUMN {name} {definition}")
                if fill:
                    db.execute(fill)
    finally:
        os.umask(old_umask)
    for p in files(path):
        if p.exists() and p.stat().st_mode & 0o077:
            os.chmod(p, 0o600)
    return db


def searchable_text(rec: dict[str, Any], line: bytes | None = None, leave_out: frozenset[str] = frozenset()
                    ) -> tuple[str, str]:
    """``(text, fields)``: the message's main text, and every other string in its payload and in
    every other JSON frame (headers, an envelope's body, a third frame), so all of them are searchable
    (but those in ``leave_out``).

    Walks the values without recursion: a payload nested as deep as the
    parser accepts is indexed like any other.
    """
    text = payload_text(rec, line)
    out: list[str] = []
    if text != "" and not text.startswith(("{", "[")):
        payload = rec.get("payload")
        roots = [payload] if isinstance(payload, (dict, list)) else []
        if "extra_b64" in rec:  # other frames (json_frames has none to give otherwise)
            roots += [v for v in envelope.json_frames(rec) if isinstance(v, (dict, list))]
        # depth first, the last frame first: a stack of iterators, each keeping its place in one container
        stack = [iter(roots[::-1])]
        while stack:
            for v in stack[-1]:
                if isinstance(v, str):
                    if v != text and v not in leave_out:
                        out.append(v)
                elif isinstance(v, dict):
                    stack.append(iter(v.values()))
                    break
                elif isinstance(v, list):
                    stack.append(iter(v))
                    break
            else:
                stack.pop()
    return text[:MAX_TEXT], "\n".join(out)[:MAX_TEXT]


class TextFromLog:
    """``persist_text(segment, offset, column)``: column 0 (the text) or 1 (the fields) of ``indexed_text`` for
    the line ending at ``offset`` of ``segment``, read back from the log; '' when that line is gone or defeats
    extraction (as ``_indexable`` indexed it). FTS5 asks for both columns of a row one after the other, so the
    last row's pair is kept."""

    def __init__(self, log: LogDir) -> None:
        self.log, self.last, self.texts = log, None, ("", "")

    def __call__(self, segment: str, offset: int, column: int) -> str:
        if (segment, offset) != self.last:
            self.last, self.texts = (segment, offset), ("", "")
            try:
                line = line_at(self.log, segment, offset)
                e = reader.entry(line, self.log.segments / segment) if line is not None else None
                if e is not None:
                    self.texts = indexed_text(e.rec, line)
            except Exception:  # noqa: BLE001 - a function SQLite calls must never raise
                pass
        return self.texts[column]


def _int(value: Any) -> int | None:
    if value.__class__ is int:  # the usual case, decided at once (a bool is of another class)
        return value if value in INT64 else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value in INT64 else None


def _row(rec: dict[str, Any], segment: str, offset: int) -> tuple:
    meta = rec.get("meta")
    get = meta.get if isinstance(meta, dict) else {}.get
    tags = get("tags")
    tags = " ".join(map(str, tags)) if isinstance(tags, list) else None
    # FIELDS, spelt out: this runs for every record a rebuild reads
    sender, recipient, thread, kind = get("sender"), get("recipient"), get("thread_id"), get("kind")
    return (rec["seq"], str(rec.get("received_at", "")), str(rec.get("topic", "")),
            None if sender is None else str(sender), None if recipient is None else str(recipient),
            None if thread is None else str(thread), None if kind is None else str(kind), tags,
            _int(get("tokens")), segment, offset, _int(get("replay_of")), int(is_system(rec)))


def indexed_text(rec: dict[str, Any], line: bytes | None) -> tuple[str, str]:
    """``searchable_text`` less the sender, recipient, thread and kind, which the FTS5 table holds in columns of
    their own: listed once per record, and found by a query that names no column just the same."""
    meta = rec.get("meta") if isinstance(rec.get("meta"), dict) else {}
    return searchable_text(rec, line, frozenset(str(meta[k]) for k in FIELDS if meta.get(k) is not None))


def _indexable(rec: dict[str, Any], line: bytes | None, segment: str, offset: int) -> tuple[tuple, tuple]:
    """The record's row and its text; a record that defeats extraction is indexed with its seq and place only."""
    try:
        row = _row(rec, segment, offset)
        # indexed_text's: the row's sender, recipient, thread and kind are the values it leaves out (a None
        # among them matches no string)
        text, fields = searchable_text(rec, line, frozenset(row[3:7]))
        return row, (row[0], text, fields, row[3], row[4], row[2], row[5], row[6], row[7])
    except Exception as exc:  # noqa: BLE001 - one hostile record must never stop indexing
        log.warning("record_indexed_partly", seq=rec["seq"], segment=segment, error=repr(exc)[:200])
        row = (rec["seq"], "", "", None, None, None, None, None, None, segment, offset, None, 0)
        return row, (rec["seq"], "", "", None, None, "", None, None, None)


Item = tuple[dict[str, Any], str, int, bytes]  # (record, segment, end offset, line)


def add(db: sqlite3.Connection, batch: list[Item]) -> None:
    """Index ``(record, segment, end offset, line)`` items and move the resume point past them, atomically."""
    if batch:
        write(db, rows_of(batch), batch[-1])


def rows_of(batch: list[Item]) -> list[tuple[tuple, tuple]]:
    """Each item's row and its words' row (``_indexable``)."""
    return [_indexable(rec, line, seg, off) for rec, seg, off, line in batch]


def write(db: sqlite3.Connection, pairs: list[tuple[tuple, tuple]], last: Item) -> None:
    """Write the rows of ``rows_of`` and move the resume point past ``last``, in one transaction."""
    db.execute("BEGIN IMMEDIATE")
    try:
        put(db, pairs)
        resume_after(db, last)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def put(db: sqlite3.Connection, pairs: list[tuple[tuple, tuple]]) -> None:
    """Write the rows of ``rows_of`` (in the caller's transaction); a row indexed already is replaced."""
    # a row indexed already loses its words first, read back from where it lies (FTS5 keeps no copy of them)
    db.execute("DELETE FROM fts WHERE rowid IN (SELECT seq FROM records WHERE seq BETWEEN ? AND ?)",
               (pairs[0][0][0], pairs[-1][0][0]))
    db.executemany(f"INSERT OR REPLACE INTO records ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                   [row for row, _ in pairs])
    db.executemany(f"INSERT INTO fts({FTS_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", [fts for _, fts in pairs])


def resume_after(db: sqlite3.Connection, last: Item) -> None:
    """Move the resume point past ``last`` (in the caller's transaction)."""
    rec, seg, off, _ = last
    db.executemany("INSERT OR REPLACE INTO state VALUES (?, ?)",
                   [("last_seq", rec["seq"]), ("segment", seg), ("offset", off)])


def position(db: sqlite3.Connection) -> tuple[int, str | None, int]:
    state = dict(db.execute("SELECT key, value FROM state").fetchall())
    return int(state.get("last_seq", 0)), state.get("segment"), int(state.get("offset", 0))


def pending(log: LogDir, db: sqlite3.Connection) -> Iterator[Item]:
    """Records written since the index's resume point: ``(record, segment, end offset, line)``. The resume point
    is read now: what is returned may be read on another thread (``ahead``)."""
    return _after(log, *position(db))


def _after(log: LogDir, last_seq: int, seg: str | None, offset: int) -> Iterator[Item]:
    for line in reader.lines(log, (seg, offset), after_seq=last_seq):
        e = reader.entry(line.data, line.path)
        if e is not None and e.seq > last_seq:
            yield e.rec, line.segment, line.end, line.data


def catch_up(log: LogDir, db: sqlite3.Connection, progress: Callable[[str, int], None] | None = None,
             batch_size: int = 5000) -> int:
    """Index everything written since the index's resume point; returns how many records were added.

    The log is read and each batch's rows made on a second thread while SQLite writes the one before
    (SQLite lets go of the interpreter while it works), so a rebuild keeps two cores busy.
    ``progress(segment, offset)`` is called after each committed batch.
    """
    forget_deleted(log, db)
    count = 0
    for pairs, last in ahead(_batches(pending(log, db), batch_size)):
        write(db, pairs, last)
        count += len(pairs)
        if progress:
            progress(last[1], last[2])
    return count


def _batches(items: Iterator[Item], size: int) -> Iterator[tuple[list[tuple[tuple, tuple]], Item]]:
    batch: list[Item] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield rows_of(batch), batch[-1]
            batch = []
    if batch:
        yield rows_of(batch), batch[-1]


def ahead(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """``items``, made on a thread of their own up to ``depth`` ahead of the caller; its exception is raised here.
    The thread ends when the caller stops early."""
    q: queue.Queue = queue.Queue(depth)
    done = threading.Event()

    def make() -> None:
        try:
            for item in items:
                while not done.is_set():
                    try:
                        q.put((True, item), timeout=0.1)
                        break
                    except queue.Full:
                        pass
                if done.is_set():
                    return
            q.put((False, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            q.put((False, exc))

    threading.Thread(target=make, name="persist-index-rows", daemon=True).start()
    try:
        while True:
            more, item = q.get()
            if not more:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        done.set()


def forget_deleted(log: LogDir, db: sqlite3.Connection) -> int:
    """Drop the rows of segments ``storage.retention`` deleted: search never shows what is gone.

    Their words cannot be read back any more, so they stay in the FTS5 table, matching no row (every query
    joins ``records``), until they make up ``STALE_SHARE`` of it: then the word lists are made again from the
    log (FTS5's ``rebuild``, over the rows that are left)."""
    removed = 0
    for stone in log.segments.glob("*.jsonl.deleted"):
        gone = retention.deleted(log, stone.name.removesuffix(".deleted"))
        if not gone or gone.get("first_seq") is None or gone.get("last_seq") is None:
            continue
        rows, params = "seq BETWEEN ? AND ? AND segment = ?", (gone["first_seq"], gone["last_seq"], gone["segment"])
        if db.execute(f"SELECT 1 FROM records WHERE {rows} LIMIT 1", params).fetchone() is None:
            continue  # forgotten already
        db.execute("BEGIN IMMEDIATE")
        n = db.execute(f"DELETE FROM records WHERE {rows}", params).rowcount
        db.execute("INSERT INTO state VALUES ('stale', ?) ON CONFLICT (key) DO UPDATE SET value = value + ?", (n, n))
        db.execute("COMMIT")
        removed += n
    if removed:
        remake_words_if_stale(db)
    return removed


def remake_words_if_stale(db: sqlite3.Connection) -> None:
    """Make the FTS5 word lists again from the log once deleted records' words are ``STALE_SHARE`` of them."""
    found = db.execute("SELECT value FROM state WHERE key = 'stale'").fetchone()
    stale = int(found[0]) if found else 0
    if stale and stale >= STALE_SHARE * (stale + db.execute("SELECT count(*) FROM records").fetchone()[0]):
        log.info("index_words_remade", stale=stale, why="words of records retention deleted")
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO fts(fts) VALUES ('rebuild')")
        db.execute("DELETE FROM state WHERE key = 'stale'")
        db.execute("COMMIT")


from persist.daemon.index.rebuild import rebuild  # noqa: E402,F401 (API; it builds on the functions above)
