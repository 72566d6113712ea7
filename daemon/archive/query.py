"""What readers ask the archive: full-text search, threads, recent records, exports and counts across
nodes, and ``check`` (the local log against what the archive holds for its node, segment by segment).
Read-only; never migrates."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from persist.daemon import archive
from persist.daemon.log import reader
from persist.daemon.log.layout import LogDir

SHOWN = "node, epoch, seq, segment, received_at, topic, sender, recipient, thread_id, kind, body, line"
SYSTEM = "$persist/"  # the daemon's own records' topics begin so


def connect_read_only(url: str, timeout: int = 5, statement_timeout_s: float = 30) -> psycopg.Connection:
    """A session that can only read: every transaction in it is read-only (``default_transaction_read_only``),
    and no statement runs longer than ``statement_timeout_s``. For readers that must never write (the web page)."""
    import psycopg

    return psycopg.connect(url, connect_timeout=timeout, application_name="persist-web", autocommit=True,
                           options=f"-c default_transaction_read_only=on "
                                   f"-c statement_timeout={int(statement_timeout_s * 1000)}")


def search(conn: psycopg.Connection, query: str, limit: int = 20, marks: tuple[str, str] | None = None,
           **filters: str | None) -> list[dict[str, Any]]:
    """Best matches first (``websearch_to_tsquery``: any text the user types is a valid query); ``filters``:
    ``node``, ``sender``, ``kind``, ``thread_id`` (equal) and ``topic`` (a prefix), ``since``/``until``. With
    ``marks`` each row also has a ``snippet`` of its text with the matches between them (``ts_headline``)."""
    snippet = (", ts_headline('simple', body, q, %(headline)s) AS snippet" if marks else "")
    return conn.cursor(row_factory=dict_row).execute(
        f"SELECT {SHOWN}, ts_rank(tsv, q) AS rank{snippet} "
        "FROM persist_records, websearch_to_tsquery('simple', %(q)s) q "
        f"WHERE tsv @@ q{_where(filters)} ORDER BY rank DESC, received_at DESC LIMIT %(limit)s",
        {"q": query, "limit": limit, "headline": _headline(marks), **filters}).fetchall()


def _headline(marks: tuple[str, str] | None) -> str:
    if not marks:
        return ""
    return f'StartSel="{marks[0]}", StopSel="{marks[1]}", MaxWords=30, MinWords=12, MaxFragments=2'


def thread(conn: psycopg.Connection, thread_id: str) -> list[dict[str, Any]]:
    """Every turn of a thread, from every node, in recorded order."""
    return conn.cursor(row_factory=dict_row).execute(
        f"SELECT {SHOWN} FROM persist_records WHERE thread_id = %s ORDER BY received_at, node, seq",
        (thread_id,)).fetchall()


@dataclass
class Span:
    """The records of one epoch in one local segment, and their checksum."""

    segment: str
    epoch: str
    first: int
    last: int
    count: int
    md5: str


def local_spans(log: LogDir) -> Iterator[Span]:
    """Per segment and epoch: the seq range, the count and the md5 of the records' lines (as the archive keeps
    them: without the newline, as UTF-8 text)."""
    epoch, span, h = "", None, None
    for line in reader.lines(log):
        rec = archive.decode(line.data)
        if rec is None:
            continue
        new_epoch = archive.epoch_of(rec, epoch)
        if span is None or span.segment != line.segment or new_epoch != epoch:
            if span is not None:
                span.md5 = h.hexdigest()
                yield span
            span, h = Span(line.segment, new_epoch, rec["seq"], rec["seq"], 0, ""), hashlib.md5()
        epoch = new_epoch
        span.last, span.count = rec["seq"], span.count + 1
        h.update(line.data.rstrip(b"\n").decode("utf-8", "replace").encode())
    if span is not None:
        span.md5 = h.hexdigest()
        yield span


def check(conn: psycopg.Connection, log: LogDir, node: str) -> list[str]:
    """What differs between the local log and the archive's rows for ``node`` (empty: nothing)."""
    problems = []
    for span in local_spans(log):
        count, md5 = conn.execute(
            "SELECT count(*), coalesce(md5(string_agg(line, '' ORDER BY seq)), md5('')) FROM persist_records "
            "WHERE node = %s AND epoch = %s AND segment = %s AND seq BETWEEN %s AND %s",
            (node, span.epoch, span.segment, span.first, span.last)).fetchone()
        what = f"segment {span.segment}" + (f" (epoch {span.epoch})" if span.epoch else "")
        if count != span.count:
            problems.append(f"{what}: {span.count} record(s) locally (seq {span.first}-{span.last}), "
                            f"{count} in the archive")
        elif md5 != span.md5:
            problems.append(f"{what}: {count} record(s) on both sides but their bytes differ "
                            f"(md5 {span.md5} locally, {md5} in the archive)")
    return problems


def _where(filters: dict[str, Any]) -> str:
    where = "".join(f" AND {k} = %({k})s" for k in ("node", "sender", "kind", "thread_id") if filters.get(k))
    if filters.get("topic"):
        where += " AND starts_with(topic, %(topic)s)"
    if filters.get("since"):
        where += " AND received_at >= %(since)s::timestamptz"
    if filters.get("until"):
        where += " AND received_at <= %(until)s::timestamptz"
    if filters.get("system") is False:  # no daemon's own records
        where += f" AND NOT starts_with(topic, '{SYSTEM}')"
    return where


def recent(conn: psycopg.Connection, count: int, **filters: str | None) -> list[dict[str, Any]]:
    """The newest ``count`` records of every node, oldest of them first."""
    rows = conn.cursor(row_factory=dict_row).execute(
        f"SELECT {SHOWN} FROM persist_records WHERE true{_where(filters)} "
        "ORDER BY received_at DESC, node, seq DESC LIMIT %(count)s", {"count": count, **filters}).fetchall()
    return rows[::-1]


def records(conn: psycopg.Connection, **filters: str | None) -> Iterator[dict[str, Any]]:
    """Every record (of the filters), in recorded order across nodes, streamed (a server-side cursor)."""
    with conn.transaction(), conn.cursor(name="persist_export", row_factory=dict_row) as cur:
        cur.execute(f"SELECT {SHOWN} FROM persist_records WHERE true{_where(filters)} "
                    "ORDER BY received_at, node, seq", filters)
        yield from cur


def threads(conn: psycopg.Connection, limit: int) -> list[dict[str, Any]]:
    """Threads across nodes, most recent first: turns, first and last time, nodes and participants."""
    return conn.cursor(row_factory=dict_row).execute(
        "SELECT thread_id, count(*) AS turns, min(received_at) AS first, max(received_at) AS last, "
        "array_agg(DISTINCT node) AS nodes, array_agg(DISTINCT sender) FILTER (WHERE sender IS NOT NULL) "
        "AS participants FROM persist_records WHERE thread_id IS NOT NULL GROUP BY thread_id "
        "ORDER BY max(received_at) DESC LIMIT %s", (limit,)).fetchall()


def summary(conn: psycopg.Connection, top: int = 15) -> dict[str, Any]:
    """What the archive holds: records, span, and counts per node, topic and sender (``stats`` and ``info``)."""
    total, first, last = conn.execute(
        "SELECT count(*), min(received_at), max(received_at) FROM persist_records").fetchone()

    def counts(column: str) -> dict[str, int]:
        return dict(conn.execute(f"SELECT coalesce({column}, '?'), count(*) FROM persist_records "
                                 f"GROUP BY 1 ORDER BY 2 DESC LIMIT %s", (top,)).fetchall())

    return {"records": total, "first": first.isoformat() if first else None,
            "last": last.isoformat() if last else None,
            "nodes": counts("node"), "topics": counts("topic"), "senders": counts("sender")}


# --- what the web page asks (persist.cli.web.archive_source) -------------------------------------


def record(conn: psycopg.Connection, node: str, seq: int, epoch: str | None = None) -> dict[str, Any] | None:
    """One record by its key; without ``epoch``, the newest epoch that has this seq."""
    if epoch is not None:
        return conn.cursor(row_factory=dict_row).execute(
            f"SELECT {SHOWN} FROM persist_records WHERE node = %s AND epoch = %s AND seq = %s",
            (node, epoch, seq)).fetchone()
    return conn.cursor(row_factory=dict_row).execute(
        f"SELECT {SHOWN} FROM persist_records WHERE node = %s AND seq = %s ORDER BY received_at DESC LIMIT 1",
        (node, seq)).fetchone()


def positions(conn: psycopg.Connection) -> dict[str, tuple]:
    """Per node, where its shipper stands: ``(epoch, seq, updated_at)``, moved in the same transaction as the
    rows it landed (a small table: cheap to ask twice a second)."""
    return {node: (epoch, seq, at) for node, epoch, seq, at in conn.execute(
        "SELECT node, epoch, seq, updated_at FROM persist_position ORDER BY node")}


def epochs(conn: psycopg.Connection, node: str) -> dict[str, int]:
    """Each epoch of ``node`` that has rows and its highest seq: one primary-key probe per epoch (a skip scan),
    never a scan of the node's rows."""
    return dict(conn.execute(
        "WITH RECURSIVE e(epoch) AS (SELECT min(epoch) FROM persist_records WHERE node = %(n)s "
        "UNION ALL SELECT (SELECT min(epoch) FROM persist_records WHERE node = %(n)s AND epoch > e.epoch) "
        "FROM e WHERE e.epoch IS NOT NULL) "
        "SELECT epoch, (SELECT max(seq) FROM persist_records r WHERE r.node = %(n)s AND r.epoch = e.epoch) "
        "FROM e WHERE epoch IS NOT NULL", {"n": node}).fetchall())


def after(conn: psycopg.Connection, node: str, epoch: str, seq: int, limit: int = 1000) -> list[dict[str, Any]]:
    """The rows of one node and epoch after ``seq``, in seq order (a primary-key range)."""
    return conn.cursor(row_factory=dict_row).execute(
        f"SELECT {SHOWN} FROM persist_records WHERE node = %s AND epoch = %s AND seq > %s ORDER BY seq LIMIT %s",
        (node, epoch, seq, limit)).fetchall()


def system(conn: psycopg.Connection, topics: tuple[str, ...], since: Any = None, until: Any = None,
           nodes: list[str] | None = None, limit: int = 5000) -> list[dict[str, Any]]:
    """The daemon's own records with these topics (gaps, restores...), oldest first; between two times and
    from these nodes when given."""
    where = "".join([" AND received_at >= %(since)s" if since is not None else "",
                     " AND received_at <= %(until)s" if until is not None else "",
                     " AND node = ANY(%(nodes)s)" if nodes is not None else ""])
    return conn.cursor(row_factory=dict_row).execute(
        f"SELECT {SHOWN} FROM persist_records WHERE topic = ANY(%(topics)s){where} "
        "ORDER BY received_at, node, seq LIMIT %(limit)s",
        {"topics": list(topics), "since": since, "until": until, "nodes": nodes, "limit": limit}).fetchall()


def edges(conn: psycopg.Connection) -> list[tuple[str, str | None, int]]:
    """Who talks to whom across nodes: ``(sender, recipient, messages)`` (recipient None: to everyone)."""
    return conn.execute("SELECT sender, recipient, count(*) FROM persist_records WHERE sender IS NOT NULL "
                        f"AND NOT starts_with(topic, '{SYSTEM}') GROUP BY sender, recipient").fetchall()


def edge(conn: psycopg.Connection, sender: str, recipient: str | None, limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` messages from ``sender`` to ``recipient`` (None: to everyone), newest first."""
    to = "recipient IS NULL" if recipient is None else "recipient = %(recipient)s"
    return conn.cursor(row_factory=dict_row).execute(
        f"SELECT {SHOWN} FROM persist_records WHERE sender = %(sender)s AND {to} "
        f"AND NOT starts_with(topic, '{SYSTEM}') ORDER BY received_at DESC, node, seq DESC LIMIT %(limit)s",
        {"sender": sender, "recipient": recipient, "limit": limit}).fetchall()


def rotations(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """The first record of each node's segments after its first one (where a log rotated), oldest first."""
    firsts = conn.cursor(row_factory=dict_row).execute(
        f"SELECT DISTINCT ON (node, segment) {SHOWN} FROM persist_records ORDER BY node, segment, seq, epoch").fetchall()
    begun: set[str] = set()
    found = []
    for r in firsts:  # a node's segments in name order: its first one is where its log begins, not a rotation
        if r["node"] in begun:
            found.append(r)
        begun.add(r["node"])
    return sorted(found, key=lambda r: (r["received_at"] is None, r["received_at"], r["node"], r["seq"]))


def per_second(conn: psycopg.Connection, since: Any) -> list[tuple[int, str | None, int]]:
    """Records per second since ``since``, every node: ``(unix second, sender, records)``, the sender None for
    the daemon's own records (for a rate, without reading the records themselves)."""
    return conn.execute(
        "SELECT floor(extract(epoch FROM received_at))::bigint, "
        f"CASE WHEN starts_with(topic, '{SYSTEM}') THEN NULL ELSE sender END, count(*) FROM persist_records "
        "WHERE received_at >= %s GROUP BY 1, 2", (since,)).fetchall()


def close_threads(conn: psycopg.Connection, thread_id: str, limit: int = 5) -> list[str]:
    """Thread ids that contain ``thread_id``, or that it contains, case-insensitively (for "did you mean")."""
    return [t for (t,) in conn.execute(
        "SELECT DISTINCT thread_id FROM persist_records WHERE thread_id IS NOT NULL AND (thread_id ILIKE %s "
        "OR %s ILIKE '%%' || thread_id || '%%') ORDER BY thread_id LIMIT %s",
        (f"%{_like(thread_id)}%", thread_id, limit))]


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
