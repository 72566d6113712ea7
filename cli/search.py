"""``persist-cli search``, ``thread``, ``threads`` and ``index rebuild``: finding what was said."""

from __future__ import annotations

import os
import signal
import sys
import time

import click

from persist.cli.common import (
    Failure,
    UsageError,
    ago,
    json_lines,
    json_option,
    parse_when,
    require_log,
    style,
    table,
    with_log_dir,
)
from persist.daemon import index
from persist.daemon.index.search import HIGHLIGHT, Filters, close_threads, search, thread_rows, threads
from persist.daemon.log import reader, render
from persist.daemon.log.errors import SearchIndexError


def open_index(log):
    """The search index, brought up to date first when no indexer is keeping it so.

    With the daemon stopped (or its indexing off) the newest records would
    otherwise be missing from what search, thread and threads find.
    """
    try:
        db = index.connect(index.index_path(log), create=False)
    except SearchIndexError as exc:
        raise Failure(str(exc)) from None
    fd = index.try_indexer_lock(log)
    if fd is not None:  # else an indexer is at work: it keeps the index current
        try:
            index.catch_up(log, db)
        finally:
            os.close(fd)
    return db


replays_option = click.option("--include-replays", is_flag=True,
                              help="Also show messages `persist-cli replay` put back on the bus (meta.replay_of).")


@click.command("search")
@click.argument("query")
@click.option("--sender")
@click.option("--topic", help="Topic prefix.")
@click.option("--thread", "thread_id")
@click.option("--kind")
@click.option("--since", help="ISO time or a duration ago (15m, 2h, 3d).")
@click.option("--until")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@replays_option
@with_log_dir
@json_option
def search_cmd(cfg, log, query, sender, topic, thread_id, kind, since, until, limit, include_replays, as_json) -> None:
    """Full-text search: words, "phrases", prefix*, AND/OR/NOT; best match first."""
    db = open_index(require_log(log))
    filters = Filters(sender, topic, thread_id, kind, parse_when(since, "--since"), parse_when(until, "--until"),
                      include_replays)
    try:
        hits = search(db, query, filters, limit, HIGHLIGHT if sys.stdout.isatty() else ("", ""))
    except SearchIndexError as exc:
        raise UsageError(str(exc)) from None
    found = [(hit, e) for hit in hits for e in index.entries(log, [(hit["segment"], hit["offset"])])]
    if as_json:
        return json_lines(e.line for _, e in found)
    if not found:
        click.echo(f"no match for {query!r}", err=True)
        return
    for hit, e in found:
        head = f"{e.rec['received_at'][:19]}  {style('#' + str(e.seq), fg='cyan')}  {e.rec['topic']}  {render.speaker(e.rec)}"
        click.echo(head)
        click.echo("    " + " ".join(hit["snippet"].split()))


@click.command("thread")
@click.argument("thread_id", required=False)
@click.option("--format", "fmt", type=click.Choice(render.FORMATS), default="markdown", show_default=True)
@click.option("--max-tokens", type=click.IntRange(min=1), help="Keep the newest turns that fit this budget.")
@click.option("--list", "list_", is_flag=True, help="List threads instead (same as `threads`).")
@replays_option
@with_log_dir
@click.pass_context
def thread_cmd(ctx, cfg, log, thread_id, fmt, max_tokens, list_, include_replays) -> None:
    """One conversation, across every tool and agent, in recorded order."""
    if list_ or thread_id is None:
        return ctx.invoke(threads_cmd, log_dir=str(log.root), config_path=cfg.source, limit=100,
                          include_replays=include_replays, as_json=fmt == "json")
    db = open_index(require_log(log))
    entries = list(index.entries(log, thread_rows(db, thread_id, include_replays)))
    if not entries:
        close = close_threads(db, thread_id)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see persist-cli threads"
        raise UsageError(f"no thread '{thread_id}'{hint}")
    left_out = 0
    if max_tokens:
        kept, used = [], 0
        for e in reversed(entries):
            cost = int(e.rec.get("meta", {}).get("tokens") or len(e.line) // 4)
            if used + cost > max_tokens and kept:
                break
            kept.append(e)
            used += cost
        left_out = len(entries) - len(kept)
        entries = kept[::-1]
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
    items = threads(open_index(require_log(log)), limit, include_replays)
    if as_json:
        return json_lines(items)
    table(["thread", "turns", "first", "last", "participants"],
          [[t["thread_id"], t["turns"], ago(t["first_at"]), ago(t["last_at"]), ", ".join(t["participants"])]
           for t in items], right=(1,))


@click.group("index")
def index_group() -> None:
    """The search index (metadata_index/): derived, rebuildable from the JSONL."""


@index_group.command()
@with_log_dir
def rebuild(cfg, log) -> None:
    """Rebuild the search index from the JSONL (pausing a running daemon's indexer meanwhile)."""
    require_log(log)
    lock_fd = take_indexer_lock(log)
    try:
        path = index.index_path(log)
        for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            p.unlink(missing_ok=True)
        db = index.connect(path)
        starts, total = {}, 0  # where each segment begins in the whole log, for the progress bar
        for seg, nbytes in reader.sizes(log):
            starts[seg.name] = total
            total += nbytes
        quiet = None if sys.stderr.isatty() else open(os.devnull, "w")
        with click.progressbar(length=total, label="indexing", file=quiet) as bar:
            count = index.catch_up(log, db, lambda seg, off: bar.update(starts.get(seg, 0) + off - bar.pos))
            bar.update(total - bar.pos)
        db.close()
    finally:
        os.close(lock_fd)
    click.echo(f"indexed {count} records into {index.index_path(log)}")


def take_indexer_lock(log) -> int:
    """Hold ``indexer.lock``; a running indexer is asked to stop (the daemon restarts it later).

    Only a process that really holds the lock and is a persist indexer is
    signalled: the pid in the file may be stale and reused by anything.
    """
    path = index.index_dir(log) / "indexer.lock"
    deadline = time.monotonic() + 15
    asked = False
    while (fd := index.try_indexer_lock(log)) is None:
        pid = index.indexer_pid(log)
        if pid and not asked:
            os.kill(pid, signal.SIGTERM)
            asked = True
        if time.monotonic() > deadline:
            raise Failure(f"{path} is held by {'the indexer (pid %d)' % pid if pid else 'another process'} "
                          "and was not released within 15 s; try again")
        time.sleep(0.05)
    return fd
