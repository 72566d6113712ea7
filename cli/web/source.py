"""The log dir as the pages read it: the search index (opened as ``persist-cli search`` opens it), records
by seq, a thread's rows, and the daemon's own records of one kind.

Every record shown is read back from the JSONL through ``persist.daemon.index.entries`` (the index is a
map, the log the truth). The few queries here that the CLI has no function for (a thread's seqs for
paging, who talks to whom, the daemon's records by topic) ask the index's ``records`` table only, never
FTS: the query language stays ``persist.daemon.index.search``'s. Never writes the log.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from persist.daemon import index
from persist.daemon.log import reader
from persist.daemon.log.layout import LogDir
from persist.daemon.log.reader import Entry

SYSTEM_EVENTS = ("$persist/gap", "$persist/restore", "$persist/retention", "$persist/start", "$persist/stop",
                 "$persist/recovered", "$persist/agent", "$persist/checkpoint")


@dataclass
class Source:
    """One log dir, read-only; ``edges`` and ``threads`` are counted incrementally (only rows indexed since the
    last count)."""

    log: LogDir
    _edges: Counter = field(default_factory=Counter)
    _edges_upto: int = 0
    _threads: dict[str, list] = field(default_factory=dict)  # thread → [first, last, turns, senders, newest seq]
    _threads_upto: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

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

    def record(self, seq: int) -> Entry | None:
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
            if upto < self._edges_upto:  # a rebuilt or restored index: count again
                self._edges, self._edges_upto = Counter(), 0
            for sender, recipient, n in db.execute(
                    "SELECT sender, recipient, count(*) FROM records WHERE seq > ? AND seq <= ? AND own = 0 "
                    "AND sender IS NOT NULL AND replay_of IS NULL GROUP BY sender, recipient",
                    (self._edges_upto, upto)):
                self._edges[(sender, recipient)] += n
            self._edges_upto = upto
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
            if upto < self._threads_upto:  # a rebuilt or restored index: count again
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
            self._threads_upto = upto
            newest_first = sorted(self._threads.items(), key=lambda kv: -kv[1][4])[:limit]
        return [{"thread_id": tid, "first_at": first, "last_at": last, "turns": turns, "participants": sorted(names)}
                for tid, (first, last, turns, names, _) in newest_first]

    def warm(self) -> None:
        """Count threads and who talks to whom now, so that those pages open at once (run on a thread at start)."""
        self.threads(1)
        self.edges()
