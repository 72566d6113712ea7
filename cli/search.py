"""``persist-cli search``, ``thread``, ``threads`` and ``index rebuild``: finding what was said."""

from __future__ import annotations

import sys

import click

from persist.cli.common import (
    Failure,
    UsageError,
    color,
    json_lines,
    json_option,
    listing,
    log_progress,
    parse_when,
    require_log,
    style,
    when,
    with_log_dir,
)
from persist.daemon import index
from persist.daemon.index.search import HIGHLIGHT, Filters, close_threads, search, thread_rows, threads, with_records
from persist.daemon.log import render
from persist.daemon.log.errors import SearchIndexError
from persist.daemon.log.select import newest_fitting


def open_index(log):
    """The search index, up to date (``index.open_complete``); says on stderr how far behind it is, if it is."""
    try:
        db, missing = index.open_complete(log)
    except SearchIndexError as exc:
        raise Failure(str(exc)) from None
    if missing:
        click.echo(f"persist-cli: the search index has not reached the newest {missing} record(s) yet "
                   "(the indexer is at work); they are not in these results", err=True)
    return db


replays_option = click.option("--include-replays", is_flag=True,
                              help="Also show messages `persist-cli replay` put back on the bus (meta.replay_of).")


@click.command("search")
@click.argument("query")
@click.option("--sender")
@click.option("--topic", help="Topic prefix.")
@click.option("--thread", "thread_id")
@click.option("--kind")
@click.option("--since", help="From this time: local (2026-11-24 19:22, 19:22), zoned ISO, 2h, today.")
@click.option("--until", help="Up to this time (same forms as --since).")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@replays_option
@with_log_dir
@json_option
def search_cmd(cfg, log, query, sender, topic, thread_id, kind, since, until, limit, include_replays, as_json) -> None:
    """Full-text search, best match first; exit 1 when nothing matches (as grep).

    \b
    QUERY is FTS5 syntax:
      backoff retry          both words          "retry loop"     a phrase
      retr*                  a prefix            a OR b, a NOT b  boolean
      sender:planner         a word in one column: text, fields, sender, recipient,
                             topic, thread_id, kind, tags (e.g. kind:error)
    A query that is not valid FTS5 (client.py, fix-42, retry -backoff) is searched
    as plain words instead, each quoted, a leading - meaning NOT.
    """
    db = open_index(require_log(log))
    filters = Filters(sender, topic, thread_id, kind, parse_when(since, "--since"), parse_when(until, "--until"),
                      include_replays)
    try:
        hits = search(db, query, filters, limit, HIGHLIGHT if color() else ("", ""))
    except SearchIndexError as exc:
        raise UsageError(str(exc)) from None
    found = with_records(log, hits)
    if as_json and found:
        return json_lines(e.line for _, e in found)
    if not found:
        if not as_json:
            click.echo(f"no match for {query!r}", err=True)
        sys.exit(1)
    for hit, e in found:
        head = f"{when(e.rec['received_at'])}  {style('#' + str(e.seq), fg='cyan')}  {e.rec['topic']}  {render.speaker(e.rec)}"
        click.echo(head)
        click.echo("    " + " ".join(hit["snippet"].split()))


@click.command("thread")
@click.argument("thread_id", required=False)
@click.option("--format", "fmt", type=click.Choice(render.FORMATS), default="markdown", show_default=True)
@click.option("--max-tokens", type=click.IntRange(min=1), help="Keep the newest turns that fit this budget.")
@click.option("--list", "list_", is_flag=True, help="List threads instead (same as `threads`).")
@replays_option
@with_log_dir
@click.option("--json", "as_json", is_flag=True, help="Same as --format json: the records as JSON Lines.")
@click.pass_context
def thread_cmd(ctx, cfg, log, thread_id, fmt, max_tokens, list_, include_replays, as_json) -> None:
    """One conversation, across every tool and agent, in recorded order."""
    fmt = "json" if as_json else fmt
    if list_ or thread_id is None:
        return ctx.invoke(threads_cmd, log_dir=str(log.root), config_path=cfg.source, limit=100,
                          include_replays=include_replays, as_json=fmt == "json")
    db = open_index(require_log(log))
    entries = list(index.entries(log, thread_rows(db, thread_id, include_replays)))
    if not entries:
        close = close_threads(db, thread_id)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see persist-cli threads"
        raise UsageError(f"no thread '{thread_id}'{hint}")
    entries, left_out = newest_fitting(entries, max_tokens)
    if left_out and fmt != "json":
        click.echo(f"({left_out} earlier turn(s) left out to fit {max_tokens} tokens)")
    for chunk in render.lines(entries, fmt):
        click.echo(chunk)
    if left_out and fmt == "json":
        click.echo(f"persist-cli: {left_out} earlier turn(s) left out to fit {max_tokens} tokens", err=True)


@click.command("threads")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@replays_option
@with_log_dir
@json_option
def threads_cmd(cfg, log, limit, include_replays, as_json) -> None:
    """Threads, most recently active first: first and last time, turns, participants."""
    listing(as_json, threads(open_index(require_log(log)), limit, include_replays),
            ["thread", "turns", "first", "last", "participants"],
            lambda t: [t["thread_id"], t["turns"], when(t["first_at"]), when(t["last_at"]), ", ".join(t["participants"])],
            right=(1,))


@click.group("index")
def index_group() -> None:
    """The search index (metadata_index/): derived, rebuildable from the JSONL."""


@index_group.command()
@with_log_dir
@json_option
def rebuild(cfg, log, as_json) -> None:
    """Rebuild the search index from the JSONL (pausing a running daemon's indexer meanwhile)."""
    require_log(log)
    with log_progress(log, "indexing") as bar:
        count = index.rebuild(log, lambda done: bar.update(done - bar.pos))
        bar.update(bar.length - bar.pos)
    if as_json:
        return json_lines([{"indexed": count, "index": str(index.index_path(log))}])
    click.echo(f"indexed {count} records into {index.index_path(log)}")
