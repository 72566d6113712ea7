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

SHOWN = "node, epoch, seq, received_at, topic, sender, recipient, thread_id, kind, body, line"


def search(conn: psycopg.Connection, query: str, limit: int = 20, **filters: str | None) -> list[dict[str, Any]]:
    """Best matches first (``websearch_to_tsquery``: any text the user types is a valid query); ``filters``:
    ``node``, ``sender``, ``kind``, ``thread_id`` (equal) and ``topic`` (a prefix)."""
    return conn.cursor(row_factory=dict_row).execute(
        f"SELECT {SHOWN}, ts_rank(tsv, q) AS rank FROM persist_records, websearch_to_tsquery('simple', %(q)s) q "
        f"WHERE tsv @@ q{_where(filters)} ORDER BY rank DESC, received_at DESC LIMIT %(limit)s",
        {"q": query, "limit": limit, **filters}).fetchall()


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
