"""Queries over the search index: ranked full-text search, threads, one thread's records, and the
records of the rows found read back from the JSONL (``entries``: the log is the truth, the index a map).

FTS5 query syntax (words, "phrases", prefix*, AND/OR/NOT, column filters such as
``sender:planner``) is passed through; a query FTS5 rejects (``client.py``,
``fix-42``, ``retry -backoff``) is searched again as plain words (``plain_terms``):
each one quoted, a leading ``-`` meaning NOT. Only a query that fails both ways
becomes a ``SearchIndexError`` with a one-line hint.
"""

from __future__ import annotations

import difflib
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from persist.daemon.log import reader
from persist.daemon.log.errors import SearchIndexError
from persist.daemon.log.layout import LogDir

HIGHLIGHT = ("\x1b[1;33m", "\x1b[0m")
# Without filters, relevance is ranked among the newest RANK_WINDOW matches: a
# word found in most of a million records is answered in milliseconds, and in
# a conversation log the recent matches are the ones wanted.
RANK_WINDOW = 5000
SNIPPETS_AT_ONCE = 500


@dataclass
class Filters:
    sender: str | None = None
    topic: str | None = None  # a prefix, like a subscription
    thread: str | None = None
    kind: str | None = None
    since: str | None = None  # ISO UTC, compared with received_at
    until: str | None = None
    include_replays: bool = False  # records `persist-cli replay` put back on the bus (meta.replay_of)

    def where(self) -> tuple[str, list[Any]]:
        clauses, args = [], []
        for column, value in (("r.sender", self.sender), ("r.thread_id", self.thread), ("r.kind", self.kind)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        if self.topic is not None:
            clauses.append("substr(r.topic, 1, ?) = ?")
            args += [len(self.topic), self.topic]
        if self.since is not None:
            clauses.append("r.received_at >= ?")
            args.append(self.since)
        if self.until is not None:
            clauses.append("r.received_at <= ?")
            args.append(self.until)
        if not self.include_replays:
            clauses.append("r.replay_of IS NULL")
        return "".join(f" AND {c}" for c in clauses), args


def plain_terms(query: str) -> str:
    """``query`` as plain words FTS5 always parses: each quoted (``client.py`` → ``"client.py"``), a word after
    another led by ``-`` excluded (``retry -backoff`` → ``"retry" NOT "backoff"``)."""
    wanted, unwanted = [], []
    for word in query.split():
        quoted = '"' + word.lstrip("-").replace('"', '""') + '"'
        if word.startswith("-") and len(word) > 1 and wanted:
            unwanted.append(quoted)
        elif word.strip("-"):
            wanted.append(quoted)
    return " ".join(wanted) + "".join(f" NOT {u}" for u in unwanted) if wanted else '""'


def search(db: sqlite3.Connection, query: str, filters: Filters, limit: int = 20,
           highlight: tuple[str, str] = ("", "")) -> list[dict[str, Any]]:
    """Hits ranked by relevance (bm25), newest first among equals, each with a snippet; a query that is not
    FTS5 syntax is searched as ``plain_terms``."""
    try:
        return _search(db, query, filters, limit, highlight)
    except sqlite3.OperationalError as exc:
        error = exc
    try:
        return _search(db, plain_terms(query), filters, limit, highlight)
    except sqlite3.OperationalError:
        raise SearchIndexError(
            f"search query {query!r} is not valid FTS5 ({error}); use words, \"a phrase\", prefix*, AND/OR/NOT, "
            "and quote words with punctuation"
        ) from None


def _search(db: sqlite3.Connection, query: str, filters: Filters, limit: int,
            highlight: tuple[str, str]) -> list[dict[str, Any]]:
    where, args = filters.where()
    if not args:  # no filter narrows the matches: rank the newest RANK_WINDOW of them
        where += (" AND fts.rowid >= (SELECT min(rowid) FROM "
                 "(SELECT rowid FROM fts WHERE fts MATCH ? ORDER BY rowid DESC LIMIT ?))")
        args = [query, RANK_WINDOW]
    rows = db.execute("SELECT r.seq, r.segment, r.offset, bm25(fts) AS rank FROM fts JOIN records r ON r.seq = fts.rowid "
                      f"WHERE fts MATCH ?{where} AND r.own = 0 ORDER BY rank, r.seq DESC LIMIT ?",
                      [query, *args, limit]).fetchall()
    # snippets of the hits shown only: FTS5 cuts each from the text read back from the log
    snippets: dict[int, str] = {}
    for at in range(0, len(rows), SNIPPETS_AT_ONCE):  # SQLite takes so many values per statement
        some = [r[0] for r in rows[at:at + SNIPPETS_AT_ONCE]]
        snippets.update(db.execute(f"SELECT rowid, snippet(fts, -1, ?, ?, '…', 12) FROM fts WHERE fts MATCH ? "
                                   f"AND rowid IN ({','.join('?' * len(some))})", [*highlight, query, *some]))
    return [{"seq": s, "segment": seg, "offset": off, "snippet": snippets.get(s, ""), "rank": rank}
            for s, seg, off, rank in rows]


def _replays(include: bool) -> str:
    return "" if include else " AND replay_of IS NULL"


def thread_rows(db: sqlite3.Connection, thread_id: str, include_replays: bool = False) -> list[tuple[str, int]]:
    """Where each record of one thread lives, in recorded order (replays only if asked)."""
    return db.execute(f"SELECT segment, offset FROM records WHERE thread_id = ?{_replays(include_replays)} "
                      "ORDER BY seq", (thread_id,)).fetchall()


def threads(db: sqlite3.Connection, limit: int = 100, include_replays: bool = False) -> list[dict[str, Any]]:
    """Threads, most recently active first, with first/last time, turns and participants."""
    rows = db.execute(
        "SELECT thread_id, min(received_at), max(received_at), count(*), group_concat(DISTINCT sender) "
        f"FROM records WHERE thread_id IS NOT NULL{_replays(include_replays)} "
        "GROUP BY thread_id ORDER BY max(seq) DESC LIMIT ?", (limit,)
    ).fetchall()
    return [{"thread_id": t, "first_at": a, "last_at": b, "turns": n, "participants": sorted((p or "").split(",") if p else [])}
            for t, a, b, n, p in rows]


def close_threads(db: sqlite3.Connection, thread_id: str) -> list[str]:
    known = [t for (t,) in db.execute("SELECT DISTINCT thread_id FROM records WHERE thread_id IS NOT NULL LIMIT 10000")]
    return difflib.get_close_matches(thread_id, known, n=3)


def line_at(log: LogDir, segment: str, end_offset: int) -> bytes | None:
    """The exact record line ending at ``end_offset`` of segment ``segment``, active or rotated (None if deleted)."""
    f = reader.open_segment(log, segment)
    if f is None:
        return None
    start = max(0, end_offset - (1 << 16))
    with f:
        while True:
            f.seek(start)
            data = f.read(end_offset - start)
            nl = data.rfind(b"\n", 0, len(data) - 1)
            if nl >= 0 or start == 0:
                return data[nl + 1 :]
            start = max(0, start - (1 << 20))


def entries(log: LogDir, rows: Iterable[tuple[str, int]]) -> Iterator[reader.Entry]:
    """The records for ``(segment, offset)`` rows, read from the JSONL itself."""
    for segment, offset in rows:
        line = line_at(log, segment, offset)
        if line is not None and (e := reader.entry(line, log.segments / segment)) is not None:
            yield e  # else storage.retention deleted it since it was indexed


def with_records(log: LogDir, hits: Iterable[dict[str, Any]]) -> list[tuple[dict[str, Any], reader.Entry]]:
    """Each hit with its record read from the JSONL; a hit whose record retention deleted since is left out."""
    return [(hit, e) for hit in hits for e in entries(log, [(hit["segment"], hit["offset"])])]


def open_readonly(path) -> sqlite3.Connection | None:
    """The index opened read-only, as it is (no catch-up: ``info`` answers at once), or None if there is none."""
    if not path.exists():
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5, isolation_level=None)
    db.execute("PRAGMA busy_timeout=5000")
    return db


def identity(db: sqlite3.Connection, upto: int) -> tuple[Any, ...]:
    """What tells whether counts made up to ``upto`` still hold: the index's oldest row and its row ``upto``
    (both change when retention deletes, a restore cuts back or ``redact apply`` rewrites and the index is made
    again)."""
    return db.execute("SELECT min(seq) FROM records").fetchone()[0], mark(db, upto)


def mark(db: sqlite3.Connection, seq: int) -> list[Any] | None:
    """What identifies the index's row ``seq`` (and so the index a count was made from)."""
    row = db.execute("SELECT received_at, segment, offset FROM records WHERE seq = ?", (seq,)).fetchone()
    return list(row) if row else None


def tallies(db: sqlite3.Connection, cached: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per-topic and per-sender counts, threads, and the gap records (where they are), from the index alone,
    and how far it reaches (``indexed_seq``).

    Counting every row costs about a second per two million records, so a ``cached`` result of this same index
    (same oldest row, same row at its ``indexed_seq``) is brought up to date with the rows added since instead.
    """
    state = dict(db.execute("SELECT key, value FROM state").fetchall())
    upto = int(state.get("last_seq", 0))
    oldest = db.execute("SELECT min(seq) FROM records").fetchone()[0]
    base = cached if (cached and cached.get("oldest") == oldest and cached.get("upto", 0) <= upto
                      and mark(db, cached.get("upto", 0)) == cached.get("mark")) else None
    after = base["upto"] if base else 0
    topics = Counter(base["topics"] if base else {})
    senders = Counter(base["senders"] if base else {})
    # a delta by rowid range; a full count so that an index on (topic, sender), where there is one, covers it
    rows = (db.execute("SELECT topic, sender, count(*) FROM records WHERE seq > ? AND seq <= ? GROUP BY topic, sender",
                       (after, upto)) if base else
            db.execute("SELECT topic, sender, count(*) FROM records WHERE seq <= ? GROUP BY topic, sender", (upto,)))
    for topic, sender, n in rows:
        topics[topic] += n
        if sender is not None:
            senders[sender] += n
    gaps = db.execute("SELECT r.segment, r.offset FROM fts JOIN records r ON r.seq = fts.rowid "
                      "WHERE fts MATCH 'topic:gap' AND r.topic = '$persist/gap' AND r.own = 1 ORDER BY r.seq"
                      ).fetchall()
    threads_n = db.execute("SELECT count(DISTINCT thread_id) FROM records").fetchone()[0]
    return {"indexed_seq": upto, "oldest": oldest, "upto": upto, "mark": mark(db, upto),
            "topics": dict(topics.most_common()), "senders": dict(senders.most_common()),
            "threads": threads_n, "gap_rows": [list(g) for g in gaps]}
