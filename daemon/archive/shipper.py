"""The shipper process: sends every record of one log dir to the PostgreSQL archive, in order, exactly once.

``python -m persist.daemon.archive.shipper --log-dir D --url U --node N --parent PID``
(the URL may come from ``$PERSIST_ARCHIVE_URL`` instead, which keeps a password
out of ``ps``). Started and restarted by the daemon (``child()``, supervised by
``persist.daemon.supervise``) like the indexer: it reads the log files, never
the socket, so it can neither slow recording nor lose a record by crashing.

It follows the log from the node's position committed in PostgreSQL, in
batches of at most ``BATCH`` records or ``COMMIT_EVERY`` seconds, each landed
with its new position in one transaction (``archive.ship``). While the archive
is away it retries with capped exponential backoff and jitter, logging each
distinct error once (one line naming the URL, never its password); the local
log is the buffer meanwhile.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import click
import psycopg
import structlog

from persist.daemon import archive, logs
from persist.daemon.archive import state
from persist.daemon.archive.archive_child import child  # noqa: F401 (the daemon's entry point)
from persist.daemon.index.indexer import die_with_parent
from persist.daemon.log import reader
from persist.daemon.log.entry import first_seq_of
from persist.daemon.log.layout import LogDir
from persist.daemon.stopping import StopOnSignal

BATCH = 2000
BATCH_BYTES = 8 << 20  # a batch of big records ends sooner: the shipper's memory stays small
COMMIT_EVERY = 0.25
POLL = 0.2
BACKOFF_BASE, BACKOFF_CAP = 0.5, 30.0
NOTE_EVERY, NOTE_IDLE = 1.0, 30.0  # the state file: at most once a second while shipping, twice a minute idle
log = structlog.get_logger("persist.archive")


def backoff(failures: int) -> float:
    """Seconds to wait after ``failures`` failures in a row: doubling up to a cap, with jitter."""
    return min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(failures, 16)) * random.uniform(0.5, 1.0)


def one_line(exc: BaseException) -> str:
    return "; ".join(s.strip() for s in str(exc).splitlines() if s.strip()) or type(exc).__name__


def still_there(log_dir: LogDir, pos: archive.Position) -> bool:
    """Whether the last line shipped is still in the log where it was (not after a restore cut it back)."""
    if pos.segment is None:
        return pos.seq == 0
    f = reader.open_segment(log_dir, pos.segment)
    if f is None or pos.line is None:
        return False
    with f:
        length = int(pos.line.split(":")[0])
        return pos.offset >= length and archive.line_id(os.pread(f.fileno(), length, pos.offset - length)) == pos.line


def batch(log_dir: LogDir, node: str, pos: archive.Position) -> tuple[list[tuple], archive.Position]:
    """The rows after ``pos`` (at most ``BATCH`` or ``BATCH_BYTES``, or what ``COMMIT_EVERY`` seconds of reading
    gave) and the position after them."""
    rows: list[tuple] = []
    epoch, seq, size, last = pos.epoch, pos.seq, 0, None
    deadline = time.monotonic() + COMMIT_EVERY
    for line in reader.lines(log_dir, (pos.segment, pos.offset), after_seq=pos.seq):
        last = line
        rec = archive.decode(line.data)
        if rec is not None and rec["seq"] > seq:
            epoch = archive.epoch_of(rec, epoch)
            rows.append(archive.row(node, epoch, rec, line.segment, line.offset, line.data))
            seq = rec["seq"]
            size += len(line.data)
        if len(rows) >= BATCH or size >= BATCH_BYTES or time.monotonic() >= deadline:
            break
    if last is None:
        return rows, pos
    return rows, replace(pos, segment=last.segment, offset=last.end, line=archive.line_id(last.data), epoch=epoch,
                         seq=seq)


def origin(log_dir: LogDir) -> str | None:
    """The id of the log's first line, if the log still starts at seq 1 (retention may have deleted it)."""
    first = next(reader.lines(log_dir), None)
    return archive.line_id(first.data) if first is not None and first_seq_of(first.segment) == 1 else None


def resume(log_dir: LogDir, conn: psycopg.Connection, node: str) -> archive.Position:
    """Claim ``node`` and give the position to ship from: the committed one, or the log's start if the last
    line shipped is no longer there."""
    pos = archive.position(conn, node)
    archive.claim(conn, node, origin(log_dir))
    if not still_there(log_dir, pos):
        log.warning("archive_rewind", node=node, segment=pos.segment, offset=pos.offset, seq=pos.seq,
                    why="the last line shipped is no longer there (a restore cut the log back): "
                        "reading the log again from its start; rows already shipped are kept once")
        pos = archive.rewind(conn, node, pos)
    return pos


def follow(log_dir: LogDir, conn: psycopg.Connection, node: str, pos: archive.Position, stop: StopOnSignal) -> None:
    """Ship from ``pos`` until ``stop`` is set (a database error ends it by raising)."""
    noted, noted_pos = 0.0, None
    shipped_at = None
    while not stop.is_set():
        rows, after = batch(log_dir, node, pos)
        if after != pos:
            archive.ship(conn, node, rows, pos, after)
            pos = after
            received = rows[-1][archive.ROW_RECEIVED_AT] if rows else None
            shipped_at = received.timestamp() if received is not None else shipped_at
        since = time.monotonic() - noted
        if (pos != noted_pos and since >= NOTE_EVERY) or since >= NOTE_IDLE:  # a word for status, not a disk load
            note(log_dir, pos, connected=True, shipped_at=shipped_at)
            noted, noted_pos = time.monotonic(), pos
        if not rows:
            stop.wait(POLL)


def note(log_dir: LogDir, pos: archive.Position, connected: bool, shipped_at: float | None = None,
         error: str | None = None) -> None:
    """Leave how far the shipper got for ``status`` and retention (``archive.state``); never raises."""
    try:
        state.write(log_dir, {"segment": pos.segment, "offset": pos.offset, "seq": pos.seq, "epoch": pos.epoch,
                              "shipped_at": shipped_at, "connected": connected, "error": error})
    except OSError as exc:
        log.warning("shipper_state_unwritten", error=str(exc))


def run(log_dir: LogDir, url: str, node: str, stop: StopOnSignal) -> None:
    """Connect, migrate, follow; on any database error wait (backoff) and start over from the committed position."""
    where = archive.safe_url(url)
    failures, last_error = 0, None
    while not stop.is_set():
        conn = None
        try:
            conn = archive.connect(url)
            was = archive.migrate(conn)
            if was < archive.VERSION:
                log.info("archive_schema", url=where, version=archive.VERSION, was=was)
            pos = resume(log_dir, conn, node)
            log.info("archive_connected", url=where, node=node, seq=pos.seq)
            failures, last_error = 0, None
            follow(log_dir, conn, node, pos, stop)
        except (psycopg.Error, archive.PositionMoved, archive.ArchiveError) as exc:
            failures += 1
            error = one_line(exc)
            if error != last_error:  # one line per distinct problem, not one per retry
                log.error("archive_unavailable", url=where, node=node, error=error,
                          retrying="with backoff; recording goes on and the local log is kept for it")
                last_error = error
                old = state.read(log_dir) or {}
                note(log_dir, archive.Position(old.get("epoch") or "", old.get("segment"), old.get("offset") or 0,
                                               old.get("seq") or 0), connected=False, error=error)
            stop.wait(backoff(failures))
        finally:
            if conn is not None:
                try:
                    conn.close()
                except psycopg.Error:
                    pass


@click.command()
@click.option("--log-dir", required=True)
@click.option("--url", envvar="PERSIST_ARCHIVE_URL", required=True, help="postgresql://... (or $PERSIST_ARCHIVE_URL)")
@click.option("--node", required=True, help="This recorder's name in the archive.")
@click.option("--parent", type=int, help="The daemon's pid: stop when it is gone.")
def main(log_dir: str, url: str, node: str, parent: int | None) -> None:
    logs.setup("json", "info", sys.stderr)
    stop = StopOnSignal(signal.SIGTERM, signal.SIGINT)
    if parent:
        die_with_parent(parent)
    os.nice(5)  # recording comes first
    run(LogDir(Path(log_dir).resolve()), url, node, stop)
    log.info("shipper_stopped", node=node)


if __name__ == "__main__":
    main()
