"""The PostgreSQL archive as the pages read it (``persist-cli --archive URL web``): every node's records,
through the same ``Source`` interface as a log dir, so every page is the same page.

All SQL is ``persist.daemon.archive.query``'s (the CLI's ``--archive`` commands ask the same functions); a
record is rebuilt from its ``line`` column (``Shipped``: an ``Entry`` with its ``node`` and ``epoch``), so
frames, hex and checksum are shown as from the log. Every session is read-only
(``query.connect_read_only``: ``default_transaction_read_only``) and nothing here migrates.

**Live, with nothing missed or doubled.** A node's rows land in the order of its log, one transaction per
batch, its ``persist_position`` moved in the same transaction, and one shipper per node at a time: within
one node and epoch, rows become visible in seq order. So the live position (``NodeCursor``) is, per node
and epoch, the highest seq shown; ``ArchiveTail`` asks the small position table twice a second and, for a
node whose position moved, reads each epoch's rows after its mark (primary-key ranges). Rows of several
nodes landing out of order, or ``shipped_at`` (a transaction's start, not its commit) going backwards,
cannot hide a row from it; a restore's new epoch is new keys. The page's first rows and its cursor come
from one snapshot (a repeatable-read transaction).
"""

from __future__ import annotations

import base64
import contextlib
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg import conninfo

from persist.cli.web import show
from persist.cli.web.source import Turn
from persist.cli.web.tail import POLL, RATE_WINDOW, Tail
from persist.daemon import archive
from persist.daemon.archive import query
from persist.daemon.index.search import Filters
from persist.daemon.log.entry import Entry, entry
from persist.daemon.log.errors import CheckpointError
from persist.daemon.log.record import is_system

POOL = 4  # idle connections kept for the pages
BATCH = 1000  # rows read at once by the tail and the backlog
NO_TIME = datetime.min.replace(tzinfo=timezone.utc)
CANNOT_SHOW = ("From the archive: each node's checkpoints as its daemon recorded them ($persist/checkpoint), "
               "not their manifests (segments, chain, what a restore would bring back), which stay in that "
               "node's log dir: persist-cli checkpoints there.")


@dataclass(slots=True)
class Shipped(Entry):
    """A record as the archive holds it: the ``Entry`` its line makes, and its key's node and epoch."""

    node: str = ""
    epoch: str = ""
    at: datetime | None = None


def shipped(row: Mapping[str, Any]) -> Shipped | None:
    """The record of one row of ``query.SHOWN`` (None for a line that is not a record)."""
    e = entry(row["line"].encode(), Path(row["segment"]))
    return None if e is None else Shipped(e.rec, e.line, e.path, row["node"], row["epoch"], row["received_at"])


def records(rows: list[Mapping[str, Any]]) -> list[Shipped]:
    return [e for e in map(shipped, rows) if e is not None]


@dataclass
class NodeCursor:
    """The live position across nodes: per ``(node, epoch)`` the highest seq shown. ``given``: it came from a
    page (its records are read first); a fresh one admits every record."""

    marks: dict[tuple[str, str], int] = field(default_factory=dict)
    given: bool = False

    @property
    def token(self) -> str:
        raw = orjson.dumps([[n, e, s] for (n, e), s in sorted(self.marks.items())])
        return "a" + base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @property
    def label(self) -> str:
        shown = [f"{n} #{s}" for (n, _e), s in sorted(self.marks.items())]
        return ", ".join(shown[:6]) + (f" and {len(shown) - 6} more" if len(shown) > 6 else "") or "nothing"

    def admit(self, e: Shipped) -> bool:
        key = (e.node, e.epoch)
        if e.seq <= self.marks.get(key, -1):
            return False
        self.marks[key] = e.seq
        return True

    @classmethod
    def parse(cls, token: str | None) -> NodeCursor:
        if not token or not token.startswith("a"):
            return cls()
        try:
            raw = base64.urlsafe_b64decode(token[1:] + "=" * (-len(token[1:]) % 4))
            marks = {(str(n), str(e)): int(s) for n, e, s in orjson.loads(raw)}
        except (ValueError, TypeError, orjson.JSONDecodeError):
            return cls()
        return cls(marks, True)


def explain(url: str, exc: BaseException) -> str:
    """One line for a database error: the URL without its password, and the password never in the text."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    try:
        secret = conninfo.conninfo_to_dict(url).get("password")
    except psycopg.Error:
        secret = None
    if secret:
        text = text.replace(str(secret), "***")
    return f"archive {archive.safe_url(url)}: {text}"


class Pool:
    """A few read-only connections for the pages; one that failed is closed, never handed out again."""

    def __init__(self, url: str) -> None:
        self.url, self.idle, self.lock = url, [], threading.Lock()

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        with self.lock:
            conn = self.idle.pop() if self.idle else None
        if conn is None or conn.closed:
            conn = query.connect_read_only(self.url)
        try:
            yield conn
        except BaseException:
            conn.close()
            raise
        with self.lock:
            if len(self.idle) < POOL and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                self.idle.append(conn)
                conn = None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        with self.lock:
            idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()


def marks_now(conn: psycopg.Connection) -> dict[tuple[str, str], int]:
    """Per node and epoch, the highest seq the archive holds."""
    return {(node, epoch): top for node in query.positions(conn) for epoch, top in query.epochs(conn, node).items()}


def rows_after(conn: psycopg.Connection, marks: dict[tuple[str, str], int], nodes) -> Iterator[list[Shipped]]:
    """The rows of ``nodes`` past ``marks`` (every row of an epoch not in them), ``BATCH`` at a time."""
    for node in nodes:
        for epoch, top in query.epochs(conn, node).items():
            seq = marks.get((node, epoch), -1)
            while top > seq:
                rows = query.after(conn, node, epoch, seq, BATCH)
                if not rows:
                    break
                seq = rows[-1]["seq"]
                yield records(rows)


class ArchiveTail(Tail):
    """The archive followed from its end: the position table asked every ``POLL`` seconds, the rows of each
    node that moved read after their marks. A lost connection is retried (its error shown on the live page)."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.conn: psycopg.Connection | None = None
        self.marks: dict[tuple[str, str], int] = {}
        self.positions: dict[str, tuple] = {}
        self.started = False  # the marks are the archive's end as of some moment (not yet if it was away)

    def _connect(self) -> psycopg.Connection:
        if self.conn is None or self.conn.closed:
            self.conn = query.connect_read_only(self.url)
        return self.conn

    def _begin(self) -> None:
        try:
            conn = self._connect()
            self.positions = query.positions(conn)
            self.marks = marks_now(conn)
            self.started = True
            since = datetime.now(timezone.utc) - timedelta(seconds=RATE_WINDOW)
            for second, sender, n in query.per_second(conn, since):  # the rate's last two minutes, counted there
                self.per_second[second] += n
                if sender is not None:
                    self.senders.setdefault(second, Counter())[sender] += n
        except psycopg.Error as exc:
            self._failed(exc)

    def _failed(self, exc: psycopg.Error) -> None:
        self.error = explain(self.url, exc)
        if self.conn is not None:
            self.conn.close()
        self.conn = None

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                self._poll()
                self.error = None
            except psycopg.Error as exc:
                self._failed(exc)
            self.wake.wait(POLL)

    def _poll(self) -> None:
        conn = self._connect()
        if not self.started:  # it started with the archive away: from its end now
            self.positions, self.marks, self.started = query.positions(conn), marks_now(conn), True
            return
        now = query.positions(conn)
        moved = [node for node, at in now.items() if self.positions.get(node) != at]
        for chunk in rows_after(conn, self.marks, moved):
            for e in chunk:
                self.marks[(e.node, e.epoch)] = max(self.marks.get((e.node, e.epoch), -1), e.seq)
            self._hand_out(chunk)
        self.positions.update({node: now[node] for node in moved})

    def stop(self) -> None:
        super().stop()
        if self.conn is not None:
            self.conn.close()


class ArchiveSource:
    """Every node's records in the archive at ``url``, read-only (``source.Source``)."""

    unavailable = (psycopg.Error,)  # the app shows these as one line on the page
    timeline_cannot_show = CANNOT_SHOW
    websearch = True  # the search form's language is websearch_to_tsquery's

    def __init__(self, url: str) -> None:
        self.url = url
        self.pool = Pool(url)
        self.tail = ArchiveTail(url)
        self.label = archive.safe_url(url)
        self.name = "archive " + self.label.rsplit("/", 1)[-1]

    @classmethod
    def open(cls, url: str) -> ArchiveSource:
        """The archive at ``url``, checked now: ``ValueError`` with one line if it cannot be read."""
        source = cls(url)
        try:
            with source.pool.connection() as conn:
                conn.execute("SELECT 1 FROM persist_records LIMIT 1")
        except psycopg.errors.UndefinedTable:
            raise ValueError(f"archive {source.label}: no persist tables there yet (no shipper has connected)") from None
        except psycopg.Error as exc:
            raise ValueError(explain(url, exc)) from None
        return source

    def explain(self, exc: BaseException) -> str:
        return explain(self.url, exc)

    def warm(self) -> None:
        with self.pool.connection() as conn:
            query.positions(conn)

    # --- live ---------------------------------------------------------------------------------

    def newest(self, count: int, filters: dict[str, Any]) -> tuple[list[Shipped], NodeCursor]:
        """The newest ``count`` records that match, newest first, and the cursor after everything there, both
        from one snapshot."""
        wanted = {"topic": filters.get("topic"), "sender": filters.get("sender"), "kind": filters.get("kind"),
                  "thread_id": filters.get("thread"), "system": filters.get("system", True)}
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            rows = query.recent(conn, count, **wanted) if count else []
            marks = marks_now(conn)
        return records(rows)[::-1], NodeCursor(marks, True)

    def cursor(self, token: str | None) -> NodeCursor:
        return NodeCursor.parse(token)

    def backlog(self, cursor: NodeCursor) -> Iterator[list[Shipped]]:
        """Every row past ``cursor`` now, a node and epoch at a time (each in seq order)."""
        with self.pool.connection() as conn:
            nodes = sorted(set(query.positions(conn)) | {n for n, _ in cursor.marks})
            yield from rows_after(conn, dict(cursor.marks), nodes)

    # --- records and threads ------------------------------------------------------------------

    def record(self, seq: int, where: Mapping[str, str]) -> Shipped | None:
        node = where.get("node")
        if not node:
            return None
        with self.pool.connection() as conn:
            row = query.record(conn, node, seq, where.get("epoch"))
        return shipped(row) if row else None

    @staticmethod
    def neighbours(e: Shipped) -> tuple[tuple[str, str], tuple[str, str]]:
        from urllib.parse import quote

        return ((f"/message/{e.seq - 1}?node={quote(e.node)}", f"{e.node} #{e.seq - 1}"),
                (f"/message/{e.seq + 1}?node={quote(e.node)}", f"{e.node} #{e.seq + 1}"))

    def threads(self, limit: int) -> list[dict[str, Any]]:
        """``persist-cli --archive URL threads``: most recently active first, across nodes."""
        with self.pool.connection() as conn:
            found = query.threads(conn, limit)
        return [{"thread_id": t["thread_id"], "first_at": t["first"].isoformat(), "last_at": t["last"].isoformat(),
                 "turns": t["turns"], "participants": sorted(t["participants"] or []), "nodes": sorted(t["nodes"])}
                for t in found]

    def thread(self, thread_id: str) -> list[Turn]:
        """``persist-cli --archive URL thread``: every node's turns in recorded order."""
        with self.pool.connection() as conn:
            found = records(query.thread(conn, thread_id))
        turns = []
        for e in found:
            meta = e.rec.get("meta") if isinstance(e.rec.get("meta"), dict) else {}
            tokens = meta.get("tokens") if type(meta.get("tokens")) is int else None
            sender = None if meta.get("sender") is None else str(meta["sender"])
            turns.append(Turn(e.seq, e, tokens, sender, e.rec.get("received_at")))
        return turns

    @staticmethod
    def locate(turns: list[Turn], seq: int, where: Mapping[str, str]) -> int:
        node, epoch = where.get("node"), where.get("epoch")
        for i, t in enumerate(turns):
            if t.seq == seq and t.key.node == node and (epoch is None or t.key.epoch == epoch):
                return i
        return 0

    @staticmethod
    def turn_entries(turns: list[Turn]) -> list[Shipped]:
        return [t.key for t in turns]

    def between(self, turns: list[Turn], topics: tuple[str, ...]) -> list[Shipped]:
        """The daemon's records with these topics, on the nodes of ``turns``, between the first and the last."""
        if not turns:
            return []
        nodes = sorted({t.key.node for t in turns})
        with self.pool.connection() as conn:
            found = records(query.system(conn, topics, turns[0].key.at, turns[-1].key.at, nodes))
        return [e for e in found if is_system(e.rec)]

    @staticmethod
    def order(e: Shipped) -> tuple:
        return (e.at or NO_TIME, e.node, e.seq)

    def close_threads(self, thread_id: str) -> list[str]:
        with self.pool.connection() as conn:
            return query.close_threads(conn, thread_id)

    def search(self, text: str, filters: Filters, limit: int, marks: tuple[str, str]) -> list[tuple[str, Shipped]]:
        """``persist-cli --archive URL search``: ``websearch_to_tsquery``, its ranking, its filters."""
        with self.pool.connection() as conn:
            rows = query.search(conn, text, limit, marks, sender=filters.sender, topic=filters.topic,
                                thread_id=filters.thread, kind=filters.kind, since=filters.since,
                                until=filters.until)
        return [(r["snippet"], e) for r in rows if (e := shipped(r)) is not None]

    # --- agents and timeline ------------------------------------------------------------------

    def edges(self) -> Counter:
        with self.pool.connection() as conn:
            return Counter({(s, r): n for s, r, n in query.edges(conn)})

    def edge_entries(self, sender: str, recipient: str | None, limit: int) -> list[Shipped]:
        with self.pool.connection() as conn:
            return records(query.edge(conn, sender, recipient, limit))

    def system(self, topics: tuple[str, ...]) -> list[Shipped]:
        with self.pool.connection() as conn:
            return [e for e in records(query.system(conn, topics)) if is_system(e.rec)]

    def checkpoints(self) -> list[dict[str, Any]]:
        """Each node's ``$persist/checkpoint`` records (the manifests are in the nodes' log dirs)."""
        found = []
        for e in self.system(("$persist/checkpoint",)):
            payload = e.rec.get("payload") if isinstance(e.rec.get("payload"), dict) else {}
            found.append({"id": payload.get("id", "?"), "label": payload.get("label"), "reason": payload.get("reason"),
                          "created_at": e.rec.get("received_at"), "last_seq": e.seq,
                          "href": show.where(e)["href"], "where_label": show.where(e)["label"]})
        return found

    def rotations(self) -> list[tuple[str, Shipped]]:
        with self.pool.connection() as conn:
            return [(r["segment"], e) for r in query.rotations(conn) if (e := shipped(r)) is not None]

    def checkpoint(self, ident: str, shown: int) -> tuple[dict[str, Any], list[Shipped], int]:
        raise CheckpointError(f"checkpoint {ident}: its manifest is in its node's log dir, not in the archive "
                              f"(persist-cli checkpoints show {ident} there)")
