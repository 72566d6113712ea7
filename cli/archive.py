"""``persist-cli archive check`` and ``persist-cli --archive URL search|thread|threads|recent|export|stats|info``:
the PostgreSQL archive
(SPEC section 12), a thin skin over ``persist.daemon.archive.query``. Every record is printed with its node."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click
import orjson
import psycopg

from persist.cli.common import Failure, json_option, parse_when, require_log, with_log_dir
from persist.daemon import archive
from persist.daemon.archive import query

archive_option = click.option("--archive", "archive_url", metavar="URL",
                              help="postgresql://... (default: [archive] url, $PERSIST_ARCHIVE_URL).")


@contextmanager
def open_archive(url: str | None, cfg=None) -> Iterator[psycopg.Connection]:
    """A connection to the archive; any database error is one line naming the URL (never its password)."""
    url = url or (cfg.archive.url if cfg is not None else "")
    if not url:
        raise Failure("no archive: give --archive URL or set [archive] url ($PERSIST_ARCHIVE_URL)")
    try:
        with archive.connect(url) as conn:
            yield conn
    except psycopg.errors.UndefinedTable:
        where = archive.safe_url(url)
        raise Failure(f"archive {where}: no persist tables there yet (no shipper has connected)") from None
    except psycopg.Error as exc:
        raise Failure(f"archive {archive.safe_url(url)}: {' '.join(str(exc).split())}") from None


def show(rows: list[dict], as_json: bool) -> None:
    for r in rows:
        if as_json:
            rec = r["line"]
            try:
                rec = orjson.loads(rec)
            except orjson.JSONDecodeError:
                pass
            click.echo(orjson.dumps({"node": r["node"], "epoch": r["epoch"], "record": rec}).decode())
            continue
        who = r["sender"] or r["topic"]
        to = f" → {r['recipient']}" if r["recipient"] else ""
        when = r["received_at"].isoformat(timespec="milliseconds") if r["received_at"] else "?"
        text = " ".join(r["body"].split())[:200]
        click.echo(f"{r['node']}  #{r['seq']}  {when}  {who}{to}: {text}")


@click.command("search")
@click.argument("query_text", metavar="QUERY")
@click.option("--node", help="Only this node's records.")
@click.option("--sender")
@click.option("--topic", help="Topic prefix.")
@click.option("--thread", "thread_id")
@click.option("--kind")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@archive_option
@json_option
def search_cmd(query_text: str, limit: int, archive_url: str | None, as_json: bool, **filters: str | None) -> None:
    """Full-text search across every node of the archive, best match first; exit 1 when nothing matches."""
    with open_archive(archive_url) as conn:
        rows = query.search(conn, query_text, limit, **filters)
    show(rows, as_json)
    if not rows:
        raise SystemExit(1)


@click.command("thread")
@click.argument("thread_id")
@archive_option
@json_option
def thread_cmd(thread_id: str, archive_url: str | None, as_json: bool) -> None:
    """One thread, from every node, in recorded order; exit 1 when the archive has none of it."""
    with open_archive(archive_url) as conn:
        rows = query.thread(conn, thread_id)
    show(rows, as_json)
    if not rows:
        raise SystemExit(1)


filters = [click.option("--node", help="Only this node's records."), click.option("--sender"),
           click.option("--topic", help="Topic prefix."), click.option("--thread", "thread_id"), click.option("--kind")]


def with_filters(f):
    for option in reversed(filters):
        f = option(f)
    return f


@click.command("recent")
@click.option("-n", "count", type=click.IntRange(min=1, max=1_000_000), default=20, show_default=True)
@with_filters
@archive_option
@json_option
def recent_cmd(count: int, archive_url: str | None, as_json: bool, **filters: str | None) -> None:
    """The newest records of every node, oldest of them first."""
    with open_archive(archive_url) as conn:
        show(query.recent(conn, count, **filters), as_json)


@click.command("export")
@click.option("--since", help="A time (ISO, local unless zoned) or 2h/yesterday.")
@click.option("--until")
@with_filters
@archive_option
def export_cmd(since: str | None, until: str | None, archive_url: str | None, **filters: str | None) -> None:
    """Every record of every node in recorded order, one JSON object per line: {"node", "epoch", "record"}."""
    bounds = {k: parse_when(v, f"--{k}") for k, v in (("since", since), ("until", until)) if v}
    with open_archive(archive_url) as conn:
        for row in query.records(conn, **filters, **bounds):
            show([row], True)


@click.command("threads")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@archive_option
@json_option
def threads_cmd(limit: int, archive_url: str | None, as_json: bool) -> None:
    """Threads across every node, most recent first."""
    with open_archive(archive_url) as conn:
        rows = query.threads(conn, limit)
    for r in rows:
        if as_json:
            click.echo(orjson.dumps({**r, "first": r["first"].isoformat(), "last": r["last"].isoformat()}).decode())
        else:
            click.echo(f"{r['thread_id']}  {r['turns']} turns  {r['first']:%Y-%m-%d %H:%M} → {r['last']:%Y-%m-%d %H:%M}"
                       f"  nodes {', '.join(r['nodes'])}  {', '.join(r['participants'] or [])}")


@click.command("stats")
@click.option("--top", type=click.IntRange(min=1), default=15, show_default=True)
@archive_option
@json_option
def stats_cmd(top: int, archive_url: str | None, as_json: bool) -> None:
    """What the archive holds: records, time span, counts per node, topic and sender."""
    with open_archive(archive_url) as conn:
        data = query.summary(conn, top)
    if as_json:
        click.echo(orjson.dumps(data).decode())
        return
    click.echo(f"{data['records']} records, {data['first']} → {data['last']}")
    for name in ("nodes", "topics", "senders"):
        click.echo(f"\n{name}")
        for key, n in data[name].items():
            click.echo(f"  {n:>10}  {key}")


@click.group("archive")
def group() -> None:
    """The PostgreSQL archive several recorders ship to."""


@group.command("check")
@click.option("--node", help="This log's node name in the archive (default: [archive] node, the host name).")
@archive_option
@with_log_dir
@json_option
def check_cmd(cfg, log, node: str | None, archive_url: str | None, as_json: bool) -> None:
    """Compare the local log with the archive, segment by segment (counts and checksums); exit 1 if they differ."""
    require_log(log)
    node = node or cfg.archive.node_name
    with open_archive(archive_url, cfg) as conn:
        problems = query.check(conn, log, node)
    if as_json:
        click.echo(orjson.dumps({"node": node, "differences": problems}).decode())
    else:
        for p in problems:
            click.echo(p)
        if not problems:
            click.echo(f"the archive holds every record of this log (node {node}), byte for byte")
    if problems:
        raise SystemExit(1)
