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
log is the buffer meanwhile. A call that gets no answer (a hung server, a
network cut that sends no reset) is cut off by a ``Watchdog`` after
``--timeout`` seconds and treated the same way.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import click
import psycopg

from persist.daemon import archive, logs
from persist.daemon.archive import state
from persist.daemon.archive.archive_child import child  # noqa: F401 (the daemon's entry point)
from persist.daemon.index.indexer import die_with_parent
from persist.daemon.log import reader
from persist.daemon.log.entry import first_seq_of
from persist.daemon.log.layout import LogDir
from persist.daemon.log.lazylog import get_logger
from persist.daemon.stopping import StopOnSignal

BATCH = 2000
BATCH_BYTES = 8 << 20  # a batch of big records ends sooner: the shipper's memory stays small
COMMIT_EVERY = 0.25
POLL = 0.2
BACKOFF_BASE, BACKOFF_CAP = 0.5, 30.0
NOTE_EVERY, NOTE_IDLE = 1.0, 30.0  # the state file: at most once a second while shipping, twice a minute idle
log = get_logger("persist.archive")


def backoff(failures: int) -> float:
    """Seconds to wait after ``failures`` failures in a row: doubling up to a cap, with jitter."""
    return min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(failures, 16)) * random.uniform(0.5, 1.0)


def one_line(exc: BaseException) -> str:
    return "; ".join(s.strip() for s in str(exc).splitlines() if s.strip()) or type(exc).__name__


class Watchdog:
    """Cuts a connection whose call gets no answer in ``seconds``: the call raises, like any lost connection.
    A cut session may still hold its locks on the server (a backend stuck on a lock never notices its client
    left), so the next connection ends it (``end_stale``)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.fired = False
        self.stale: int | None = None  # the backend pid of the session cut off

    @contextmanager
    def guard(self, conn: psycopg.Connection) -> Iterator[None]:
        timer = threading.Timer(self.seconds, self._cut, (conn,))
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    def _cut(self, conn: psycopg.Connection) -> None:
        self.fired, self.stale = True, conn.info.backend_pid
        try:  # shutdown, not close: the socket stays psycopg's to close, and its waiting call wakes up
            with socket.socket(fileno=os.dup(conn.fileno())) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def why(self, exc: BaseException) -> str:
        """The line to log for ``exc``: a cut says so rather than psycopg's "server closed the connection"."""
        if self.fired:
            self.fired = False
            return f"no answer from the archive in {self.seconds:g} s (a hung server or a network cut): cut off"
        return one_line(exc)

    def end_stale(self, conn: psycopg.Connection) -> None:
        """End the session cut off last time, if the server still has it (its locks would block this one)."""
        if self.stale is not None:
            conn.execute("SELECT pg_terminate_backend(%s)", (self.stale,))
            self.stale = None


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


class Batch:
    """The rows after ``pos``, made one by one as the log is read (at most ``BATCH`` rows or ``BATCH_BYTES``, or
    what ``COMMIT_EVERY`` seconds of reading gave); once they are all out, ``after()`` is the position after them
    and ``received`` the last one's receive time."""

    def __init__(self, log_dir: LogDir, node: str, pos: archive.Position) -> None:
        self.node, self.pos, self.received = node, pos, None
        self.epoch, self.seq = pos.epoch, pos.seq
        self.lines = reader.lines(log_dir, (pos.segment, pos.offset), after_seq=pos.seq)
        self.last = next(self.lines, None)

    def __bool__(self) -> bool:
        """Whether there is anything after ``pos`` (a line to ship, or one to step over)."""
        return self.last is not None

    def __iter__(self) -> Iterator[tuple]:
        epoch, seq, size, count = self.pos.epoch, self.pos.seq, 0, 0
        deadline = time.monotonic() + COMMIT_EVERY
        line = self.last
        while line is not None:
            self.last = line
            rec = archive.decode(line.data)
            if rec is not None and rec["seq"] > seq:
                epoch, seq = archive.epoch_of(rec, epoch), rec["seq"]
                row = archive.row(self.node, epoch, rec, line.segment, line.offset, line.data)
                self.received = row[archive.ROW_RECEIVED_AT] or self.received
                self.epoch, self.seq = epoch, seq
                count, size = count + 1, size + len(line.data)
                yield row
            if count >= BATCH or size >= BATCH_BYTES or time.monotonic() >= deadline:
                break
            line = next(self.lines, None)
        self.epoch, self.seq = epoch, seq

    def after(self) -> archive.Position:
        last = self.last
        return replace(self.pos, segment=last.segment, offset=last.end, line=archive.line_id(last.data),
                       epoch=self.epoch, seq=self.seq)


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


class Trouble:
    """The shipper's run of failures: how long to wait before the next try, and each distinct problem said once
    (a problem is over when a batch lands, not when a connection opens: a hung server accepts them)."""

    def __init__(self) -> None:
        self.failures, self.last = 0, None

    def failed(self, error: str) -> bool:
        """Count a failure; whether ``error`` is news (not the problem already said)."""
        self.failures += 1
        news, self.last = error != self.last, error
        return news

    def over(self) -> None:
        self.failures, self.last = 0, None


def follow(log_dir: LogDir, conn: psycopg.Connection, node: str, pos: archive.Position, stop: StopOnSignal,
           watchdog: Watchdog, trouble: Trouble, where: str) -> None:
    """Ship from ``pos`` until ``stop`` is set (a database error ends it by raising)."""
    noted, noted_pos = 0.0, None
    shipped_at = None
    connected = False
    while not stop.is_set():
        rows = Batch(log_dir, node, pos)
        if rows:
            with watchdog.guard(conn):
                archive.ship(conn, node, rows, pos, rows.after)
            pos = rows.after()
            shipped_at = rows.received.timestamp() if rows.received is not None else shipped_at
        if not connected:  # a batch landed, or there was none to land: the archive works
            log.info("archive_connected", url=where, node=node, seq=pos.seq)
            trouble.over()
            connected = True
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


def run(log_dir: LogDir, url: str, node: str, stop: StopOnSignal, timeout: float = 30.0) -> None:
    """Connect, migrate, follow; on any database error wait (backoff) and start over from the committed position."""
    where = archive.safe_url(url)
    trouble, watchdog = Trouble(), Watchdog(timeout)
    while not stop.is_set():
        conn = None
        try:
            conn = archive.connect(url, timeout=max(1, round(timeout)))
            with watchdog.guard(conn):
                watchdog.end_stale(conn)
                archive.keep_alive(conn, timeout)
                was = archive.migrate(conn)
                if was < archive.VERSION:
                    log.info("archive_schema", url=where, version=archive.VERSION, was=was)
                pos = resume(log_dir, conn, node)
            follow(log_dir, conn, node, pos, stop, watchdog, trouble, where)
        except (psycopg.Error, archive.PositionMoved, archive.ArchiveError) as exc:
            error = watchdog.why(exc)
            if trouble.failed(error):  # one line per distinct problem, not one per retry
                log.error("archive_unavailable", url=where, node=node, error=error,
                          retrying="with backoff; recording goes on and the local log is kept for it")
                old = state.read(log_dir) or {}
                note(log_dir, archive.Position(old.get("epoch") or "", old.get("segment"), old.get("offset") or 0,
                                               old.get("seq") or 0), connected=False, error=error)
            stop.wait(backoff(trouble.failures))
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
@click.option("--timeout", type=float, default=30.0, help="Seconds a database call may go unanswered.")
@click.option("--parent", type=int, help="The daemon's pid: stop when it is gone.")
def main(log_dir: str, url: str, node: str, timeout: float, parent: int | None) -> None:
    logs.setup("json", "info", sys.stderr)
    stop = StopOnSignal(signal.SIGTERM, signal.SIGINT)
    if parent:
        die_with_parent(parent)
    os.nice(5)  # recording comes first
    run(LogDir(Path(log_dir).resolve()), url, node, stop, timeout)
    log.info("shipper_stopped", node=node)


if __name__ == "__main__":
    main()
