"""Where the pages' records come from: ``LogSource`` (a log dir, here) and ``ArchiveSource`` (the PostgreSQL
archive, every node: ``archive_source``). Both provide ``Source``, the one interface every page talks to; a
page never knows which it has.

What the interface hands out are ``Entry``s (a record and its exact line; the archive's also carry their
``node`` and ``epoch``), so every page shows a record through ``show.row`` whatever its source. A record is
named by its seq and ``show.where`` (the archive's ``?node=…&epoch=…``); the live stream's position is a
``Cursor`` (after which seq, or after which seq of each node and epoch).

``LogSource``: the search index (opened as ``persist-cli search`` opens it), records by seq, a thread's
rows, and the daemon's own records of one kind. Every record shown is read back from the JSONL through
``persist.daemon.index.entries`` (the index is a map, the log the truth). The few queries here that the CLI
has no function for (a thread's seqs for paging, who talks to whom, the daemon's records by topic) ask the
index's ``records`` table only, never FTS: the query language stays ``persist.daemon.index.search``'s.
Never writes the log.
"""

from __future__ import annotations

import bisect
import contextlib
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from persist.daemon import index
from persist.daemon.index.search import Filters, close_threads, identity, search, with_records
from persist.daemon.log import checkpoints, reader, select
from persist.daemon.log.layout import LogDir
from persist.daemon.log.reader import Entry

SYSTEM_EVENTS = ("$persist/gap", "$persist/restore", "$persist/retention", "$persist/start", "$persist/stop",
                 "$persist/recovered", "$persist/agent", "$persist/checkpoint")


class Turn(NamedTuple):
    """One turn of a thread, before its record is read: ``key`` is the source's own (where to read it)."""

    seq: int
    key: Any
    tokens: int | None
    sender: str | None
    received_at: str | None


class Cursor(Protocol):
    """How far a live stream has got: ``admit`` says whether a record is new (and moves past it); ``token`` is
    what the page sends back to resume (the SSE id, the ``#last-seq`` field), ``label`` what it shows."""

    token: str
    label: str
    given: bool  # it names a position (the records after it are read first); else it admits every record

    def admit(self, e: Entry) -> bool: ...


class Source(Protocol):
    """What every page asks, of a log dir or of the archive."""

    label: str  # shown in the page's header: the log dir, or the archive's URL without its password
    name: str  # in the page's title
    tail: Any  # ``tail.Tail``: new records handed to each live page, and the rates

    def warm(self) -> None: ...
    def newest(self, count: int, filters: dict[str, Any]) -> tuple[list[Entry], Cursor]: ...
    def cursor(self, token: str | None) -> Cursor: ...
    def backlog(self, cursor: Cursor) -> Iterator[list[Entry]]: ...
    def record(self, seq: int, where: Mapping[str, str]) -> Entry | None: ...
    def neighbours(self, e: Entry) -> tuple[str, str]: ...
    def threads(self, limit: int) -> list[dict[str, Any]]: ...
    def thread(self, thread_id: str) -> list[Turn]: ...
    def locate(self, turns: list[Turn], seq: int, where: Mapping[str, str]) -> int: ...
    def turn_entries(self, turns: list[Turn]) -> list[Entry]: ...
    def between(self, turns: list[Turn], topics: tuple[str, ...]) -> list[Entry]: ...
    def order(self, e: Entry) -> Any: ...
    def close_threads(self, thread_id: str) -> list[str]: ...
    def search(self, query: str, filters: Filters, limit: int, marks: tuple[str, str]) -> list[tuple[str, Entry]]: ...
    def edges(self) -> Counter: ...
    def edge_entries(self, sender: str, recipient: str | None, limit: int) -> list[Entry]: ...
    def system(self, topics: tuple[str, ...]) -> list[Entry]: ...
    def checkpoints(self) -> list[dict[str, Any]]: ...
    def rotations(self) -> list[tuple[str, Entry]]: ...
    def checkpoint(self, ident: str, shown: int) -> tuple[dict[str, Any], list[Entry], int]: ...


@dataclass
class SeqCursor:
    """A log dir's live position: the newest seq the page has."""

    seq: int = -1

    @property
    def given(self) -> bool:
        return self.seq >= 0

    @property
    def token(self) -> str:
        return str(self.seq)

    @property
    def label(self) -> str:
        return f"#{self.seq}"

    def admit(self, e: Entry) -> bool:
        if e.seq <= self.seq:
            return False
        self.seq = e.seq
        return True


@dataclass
class LogSource:
    """One log dir, read-only; ``edges`` and ``threads`` are counted incrementally (only rows indexed since the
    last count)."""

    log: LogDir
    tail: Any = None
    _edges: Counter = field(default_factory=Counter)
    _edges_upto: int = 0
    _edges_of: Any = None  # search.identity of the index the edges were counted from
    _threads: dict[str, list] = field(default_factory=dict)  # thread → [first, last, turns, senders, newest seq]
    _threads_upto: int = 0
    _threads_of: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def label(self) -> str:
        return str(self.log.root)

    @property
    def name(self) -> str:
        return self.log.root.name

    @contextlib.contextmanager
    def index(self, wait: float = 0.5) -> Iterator[sqlite3.Connection]:
        """The search index, up to date as ``persist-cli search`` has it (``index.open_complete``)."""
        db, _missing = index.open_complete(self.log, wait)
        try:
            yield db
        finally:
            db.close()

    def entries(self, rows: list[tuple[str, int]]) -> list[Entry]:
        return list(index.entries(self.log, rows))

    def record(self, seq: int, where: Mapping[str, str] | None = None) -> Entry | None:
        """The record ``seq``: found through the index, or read from the log if the index has not reached it."""
        with self.index(wait=0) as db:
            row = db.execute("SELECT segment, offset FROM records WHERE seq = ?", (seq,)).fetchone()
        if row is not None:
            found = self.entries([row])
            if found:
                return found[0]
        for e in reader.records(self.log, after_seq=seq - 1):
            return e if e.seq == seq else None
        return None

    def position_after(self, seq: int) -> tuple[str | None, int]:
        """Where the record after ``seq`` starts (segment, byte offset), from the index; the log's start if unknown."""
        with self.index(wait=0) as db:
            row = db.execute("SELECT segment, offset FROM records WHERE seq = ?", (seq,)).fetchone()
        return (row[0], row[1]) if row else (None, 0)

    @staticmethod
    def thread_rows(db: sqlite3.Connection, thread_id: str) -> list[tuple]:
        """``(seq, segment, offset, tokens, sender, received_at)`` of every turn of a thread, in recorded order
        (no replays, as ``persist-cli thread``)."""
        return db.execute("SELECT seq, segment, offset, tokens, sender, received_at FROM records "
                          "WHERE thread_id = ? AND replay_of IS NULL ORDER BY seq", (thread_id,)).fetchall()

    def system_rows(self, db: sqlite3.Connection, topics: tuple[str, ...], first: int = 0,
                    last: int = 1 << 62, limit: int = 5000) -> list[tuple[str, int]]:
        """The daemon's own records with these topics (gaps, restores...) between two seqs, oldest first."""
        marks = ",".join("?" * len(topics))
        return db.execute(f"SELECT segment, offset FROM records WHERE topic IN ({marks}) AND own = 1 "
                          "AND seq BETWEEN ? AND ? ORDER BY seq LIMIT ?", (*topics, first, last, limit)).fetchall()

    def edges(self) -> Counter:
        """``(sender, recipient) → messages``: who talks to whom (recipient None: to everyone), replays left out."""
        with self._lock, self.index(wait=0.5) as db:
            upto = index.position(db)[0]
            if upto < self._edges_upto or identity(db, self._edges_upto) != self._edges_of:  # another index: again
                self._edges, self._edges_upto = Counter(), 0
            for sender, recipient, n in db.execute(
                    "SELECT sender, recipient, count(*) FROM records WHERE seq > ? AND seq <= ? AND own = 0 "
                    "AND sender IS NOT NULL AND replay_of IS NULL GROUP BY sender, recipient",
                    (self._edges_upto, upto)):
                self._edges[(sender, recipient)] += n
            self._edges_upto, self._edges_of = upto, identity(db, upto)
            return Counter(self._edges)

    def edge_rows(self, db: sqlite3.Connection, sender: str, recipient: str | None, limit: int) -> list[tuple[str, int]]:
        """Where the newest ``limit`` messages from ``sender`` to ``recipient`` live, newest first."""
        to = "recipient IS NULL" if recipient is None else "recipient = ?"
        args: list[Any] = [sender] + ([] if recipient is None else [recipient])
        return db.execute(f"SELECT segment, offset FROM records WHERE sender = ? AND {to} AND own = 0 "
                          "AND replay_of IS NULL ORDER BY seq DESC LIMIT ?", (*args, limit)).fetchall()

    def upto_rows(self, db: sqlite3.Connection, last_seq: int, limit: int) -> list[tuple[str, int]]:
        """The newest ``limit`` agents' records (no ``$persist/`` ones) up to ``last_seq``, oldest first: the end
        of what ``restore ID`` brings back."""
        rows = db.execute("SELECT segment, offset FROM records WHERE seq <= ? AND own = 0 ORDER BY seq DESC LIMIT ?",
                          (last_seq, limit)).fetchall()
        return rows[::-1]

    def threads(self, limit: int) -> list[dict[str, Any]]:
        """``persist-cli threads`` (``search.threads``: most recently active first, no replays), from per-thread
        tallies kept up to date incrementally (only rows indexed since the last call are grouped): on a million
        records the first count takes seconds (``warm`` does it when the server starts), later ones milliseconds."""
        with self._lock, self.index(wait=0.5) as db:
            upto = index.position(db)[0]
            if upto < self._threads_upto or identity(db, self._threads_upto) != self._threads_of:  # another index
                self._threads, self._threads_upto = {}, 0
            for tid, first, last, turns, senders, newest in db.execute(
                    "SELECT thread_id, min(received_at), max(received_at), count(*), group_concat(DISTINCT sender), "
                    "max(seq) FROM records WHERE seq > ? AND seq <= ? AND thread_id IS NOT NULL "
                    "AND replay_of IS NULL GROUP BY thread_id", (self._threads_upto, upto)):
                t = self._threads.get(tid)
                names = set(senders.split(",")) if senders else set()
                if t is None:
                    self._threads[tid] = [first, last, turns, names, newest]
                else:
                    t[0], t[1], t[2], t[4] = min(t[0], first), max(t[1], last), t[2] + turns, max(t[4], newest)
                    t[3] |= names
            self._threads_upto, self._threads_of = upto, identity(db, upto)
            newest_first = sorted(self._threads.items(), key=lambda kv: -kv[1][4])[:limit]
        return [{"thread_id": tid, "first_at": first, "last_at": last, "turns": turns, "participants": sorted(names)}
                for tid, (first, last, turns, names, _) in newest_first]

    def warm(self) -> None:
        """Count threads and who talks to whom now, so that those pages open at once (run on a thread at start)."""
        self.threads(1)
        self.edges()

    # --- the rest of ``Source`` -------------------------------------------------------------

    def newest(self, count: int, filters: dict[str, Any]) -> tuple[list[Entry], SeqCursor]:
        """The newest ``count`` records that match (``select.recent``), newest first, and the log's newest seq."""
        last = reader.last_record(self.log)
        return list(select.recent(self.log, count, reverse=True, **filters)), SeqCursor(last.seq if last else 0)

    def cursor(self, token: str | None) -> SeqCursor:
        try:
            return SeqCursor(max(int(token), -1) if token not in (None, "") else -1)
        except ValueError:
            return SeqCursor()

    def backlog(self, cursor: SeqCursor) -> Iterator[list[Entry]]:
        """Every record after the cursor in the log now, in chunks."""
        after, chunk = cursor.seq, []
        for line in reader.lines(self.log, self.position_after(after), after_seq=after):
            e = reader.entry(line.data, line.path)
            if e is not None and e.seq > after:
                chunk.append(e)
                if len(chunk) >= 500:
                    yield chunk
                    chunk = []
        if chunk:
            yield chunk

    def neighbours(self, e: Entry) -> tuple[tuple[str, str], tuple[str, str]]:
        return (f"/message/{e.seq - 1}", f"#{e.seq - 1}"), (f"/message/{e.seq + 1}", f"#{e.seq + 1}")

    def thread(self, thread_id: str) -> list[Turn]:
        with self.index(wait=1.0) as db:
            return [Turn(seq, (seg, off), tok, sender, at)
                    for seq, seg, off, tok, sender, at in self.thread_rows(db, thread_id)]

    def locate(self, turns: list[Turn], seq: int, where: Mapping[str, str]) -> int:
        return bisect.bisect_left([t.seq for t in turns], seq)

    def turn_entries(self, turns: list[Turn]) -> list[Entry]:
        return self.entries([t.key for t in turns])

    def between(self, turns: list[Turn], topics: tuple[str, ...]) -> list[Entry]:
        """The daemon's records with these topics between the first and the last of ``turns``."""
        if not turns:
            return []
        with self.index(wait=0) as db:
            return self.entries(self.system_rows(db, topics, turns[0].seq, turns[-1].seq))

    @staticmethod
    def order(e: Entry) -> int:
        return e.seq

    def close_threads(self, thread_id: str) -> list[str]:
        with self.index(wait=0) as db:
            return close_threads(db, thread_id)

    def search(self, query: str, filters: Filters, limit: int, marks: tuple[str, str]) -> list[tuple[str, Entry]]:
        """``persist-cli search``: its query language, ranking and filters; each hit's snippet and record."""
        with self.index(wait=1.0) as db:
            found = with_records(self.log, search(db, query, filters, limit, marks))
        return [(hit["snippet"], e) for hit, e in found]

    def edge_entries(self, sender: str, recipient: str | None, limit: int) -> list[Entry]:
        with self.index(wait=0.5) as db:
            return self.entries(self.edge_rows(db, sender, recipient, limit))

    def system(self, topics: tuple[str, ...]) -> list[Entry]:
        with self.index(wait=0.5) as db:
            return self.entries(self.system_rows(db, topics))

    def checkpoints(self) -> list[dict[str, Any]]:
        """Each checkpoint (``checkpoints list``), its page ``/checkpoint/ID``."""
        return [{**m, "href": f"/checkpoint/{m['id']}"} for m in checkpoints.listing(self.log, [])]

    def rotations(self) -> list[tuple[str, Entry]]:
        """Each segment after the first and its first record: where the log rotated."""
        found = []
        for seg in reader.segments(self.log)[1:]:
            first = reader.first_record(seg.path)
            if first is not None:
                found.append((seg.name, first))
        return found

    def checkpoint(self, ident: str, shown: int) -> tuple[dict[str, Any], list[Entry], int]:
        """Checkpoint ``ident``'s manifest, the newest ``shown`` turns it holds, and how many records came after
        it (what ``restore`` would set aside); ``CheckpointError`` when there is none."""
        m = checkpoints.find(self.log, ident)
        newest = reader.last_record(self.log)
        with self.index(wait=0.5) as db:
            turns = self.entries(self.upto_rows(db, m["last_seq"], shown))
        return m, turns, (newest.seq - m["last_seq"]) if newest else 0
