"""The search index: SQLite with FTS5 in ``metadata_index/index.sqlite``.

Derived data only: it can be deleted and rebuilt from the JSONL at any time.
Each record is a row keyed by its ``seq`` (so indexing twice never duplicates),
with its enriched fields, where its line lives (segment and byte offset, to
print the record exactly as written), and its text in an FTS5 table. The
``state`` table remembers how far indexing got (last seq, segment, offset), in
the same transaction as the rows, so an indexer killed at any moment resumes
exactly where its last commit ended.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from persist.daemon import reader, retention
from persist.daemon.errors import SearchIndexError
from persist.daemon.render import payload_text
from persist.daemon.store import LogDir, segment_name

SCHEMA = """
PRAGMA journal_mode=WAL;
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY, received_at TEXT NOT NULL, topic TEXT NOT NULL,
    sender TEXT, recipient TEXT, thread_id TEXT, kind TEXT, tags TEXT, tokens INTEGER,
    segment TEXT NOT NULL, offset INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS records_thread ON records(thread_id, seq);
CREATE INDEX IF NOT EXISTS records_time ON records(received_at);
CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(
    text, fields, sender, recipient, topic, thread_id, kind, tags, tokenize='unicode61');
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value);
"""
FIELDS = ("sender", "recipient", "thread_id", "kind")


def index_dir(log: LogDir) -> Path:
    return log.root / "metadata_index"


def index_path(log: LogDir) -> Path:
    return index_dir(log) / "index.sqlite"


def try_indexer_lock(log: LogDir) -> int | None:
    """An fd holding ``indexer.lock`` (one indexer per log dir), or None if someone else holds it."""
    index_dir(log).mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(index_dir(log) / "indexer.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except BlockingIOError:
        os.close(fd)
        return None


def connect(path: Path, create: bool = True) -> sqlite3.Connection:
    if not create and not path.exists():
        raise SearchIndexError(f"no search index at {path}; run persist-cli index rebuild (the daemon keeps it current)")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    db.execute("PRAGMA busy_timeout=30000")
    db.executescript(SCHEMA)  # idempotent; also completes a file an indexer has only just created
    if create:
        os.chmod(path, 0o600)
    return db


def searchable_text(rec: dict[str, Any]) -> tuple[str, str]:
    """``(text, fields)``: the message's main text, and every other string in its payload."""
    text = payload_text(rec)
    out: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, str):
            if v != text:
                out.append(v)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    if isinstance(rec.get("payload"), (dict, list)) and text != "" and not text.startswith(("{", "[")):
        walk(rec["payload"])
    return text, "\n".join(out)


def _row(rec: dict[str, Any], segment: str, offset: int) -> tuple:
    meta = rec.get("meta", {})
    tags = " ".join(map(str, meta.get("tags", []))) if isinstance(meta.get("tags"), list) else None
    values = [None if meta.get(k) is None else str(meta[k]) for k in FIELDS]
    return (rec["seq"], rec["received_at"], rec["topic"], *values, tags, meta.get("tokens"), segment, offset)


def add(db: sqlite3.Connection, batch: list[tuple[dict[str, Any], str, int]]) -> None:
    """Index ``(record, segment, offset)`` rows and move the resume point past them, atomically."""
    if not batch:
        return
    rows = [_row(rec, seg, off) for rec, seg, off in batch]
    db.execute("BEGIN IMMEDIATE")
    try:
        db.executemany("INSERT OR REPLACE INTO records VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
        db.executemany("DELETE FROM fts WHERE rowid = ?", [(r[0],) for r in rows])
        db.executemany(
            "INSERT INTO fts(rowid, text, fields, sender, recipient, topic, thread_id, kind, tags) "
            "VALUES (?,?,?,?,?,?,?,?,?)",
            [(r[0], *searchable_text(rec), r[3], r[4], r[2], r[5], r[6], r[7]) for r, (rec, _, _) in zip(rows, batch)],
        )
        rec, seg, off = batch[-1]
        db.executemany("INSERT OR REPLACE INTO state VALUES (?, ?)",
                       [("last_seq", rec["seq"]), ("segment", seg), ("offset", off)])
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def position(db: sqlite3.Connection) -> tuple[int, str | None, int]:
    state = dict(db.execute("SELECT key, value FROM state").fetchall())
    return int(state.get("last_seq", 0)), state.get("segment"), int(state.get("offset", 0))


def stable_segments(log: LogDir) -> list[tuple[str, Path]]:
    """``(segment name, path)`` in order; the active segment under the name it will rotate to."""
    found = [(p.name, p) for p in sorted(log.segments.glob("*.jsonl"))] if log.segments.is_dir() else []
    first = reader.first_record(log.active)
    if first is not None:
        found.append((segment_name(first.seq), log.active))
    return found


def pending(log: LogDir, db: sqlite3.Connection) -> Iterator[tuple[dict[str, Any], str, int]]:
    """Records written since the index's resume point, with where they live."""
    last_seq, seg, offset = position(db)
    segments = stable_segments(log)
    names = [name for name, _ in segments]
    start = names.index(seg) if seg in names else 0
    for i, (name, path) in enumerate(segments[start:]):
        begin = offset if (i == 0 and seg == name) else 0
        for off, line in reader.lines_forward(path, begin):
            try:
                rec = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(rec, dict) and rec.get("seq", 0) > last_seq:
                yield rec, name, off + len(line)


def catch_up(log: LogDir, db: sqlite3.Connection, progress: Callable[[str, int], None] | None = None,
             batch_size: int = 5000) -> int:
    """Index everything written since the index's resume point; returns how many records were added.

    ``progress(segment, offset)`` is called after each committed batch.
    """
    forget_deleted(log, db)
    batch: list = []
    count = 0
    for item in pending(log, db):
        batch.append(item)
        if len(batch) >= batch_size:
            add(db, batch)
            count += len(batch)
            batch = []
            if progress:
                progress(item[1], item[2])
    add(db, batch)
    return count + len(batch)


def forget_deleted(log: LogDir, db: sqlite3.Connection) -> int:
    """Drop the rows of segments ``storage.retention`` deleted: search never shows what is gone."""
    removed = 0
    for stone in log.segments.glob("*.jsonl.deleted"):
        gone = retention.deleted(log, stone.name.removesuffix(".deleted"))
        if not gone or gone.get("first_seq") is None or gone.get("last_seq") is None:
            continue
        rows, params = "seq BETWEEN ? AND ? AND segment = ?", (gone["first_seq"], gone["last_seq"], gone["segment"])
        if db.execute(f"SELECT 1 FROM records WHERE {rows} LIMIT 1", params).fetchone() is None:
            continue  # forgotten already
        db.execute("BEGIN IMMEDIATE")
        db.execute(f"DELETE FROM fts WHERE rowid IN (SELECT seq FROM records WHERE {rows})", params)
        removed += db.execute(f"DELETE FROM records WHERE {rows}", params).rowcount
        db.execute("COMMIT")
    return removed


def line_at(log: LogDir, segment: str, end_offset: int, cache: dict[str, Path]) -> bytes | None:
    """The exact record line ending at ``end_offset`` of segment ``segment`` (None if it was deleted)."""
    if segment not in cache:
        cache.update(dict(stable_segments(log)))
    path = cache.get(segment)
    if path is None:
        return None
    start = max(0, end_offset - (1 << 16))
    with open(path, "rb") as f:
        while True:
            f.seek(start)
            data = f.read(end_offset - start)
            nl = data.rfind(b"\n", 0, len(data) - 1)
            if nl >= 0 or start == 0:
                return data[nl + 1 :]
            start = max(0, start - (1 << 20))


def entries(log: LogDir, rows: Iterable[tuple[str, int]]) -> Iterator[reader.Entry]:
    """The records for ``(segment, offset)`` rows, read from the JSONL itself."""
    cache: dict[str, Path] = {}
    for segment, offset in rows:
        line = line_at(log, segment, offset, cache)
        if line is not None:  # else storage.retention deleted it since it was indexed
            yield reader.Entry(orjson.loads(line), line, cache[segment])
