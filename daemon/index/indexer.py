"""The indexer process: keeps ``metadata_index/`` current while the daemon records.

A separate process (``python -m persist.daemon.index.indexer --log-dir D``), started
and restarted by the daemon, so that it can never block the writer nor cost a
record if it crashes. It follows the JSONL (woken by watchdog, with a short poll
as a safety net), commits at least every ``COMMIT_EVERY`` seconds so a record
is searchable within a second of being written, and after a kill -9 resumes
from its last committed position. One indexer per log dir (an flock).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import click
import structlog

from persist.daemon import index, logs
from persist.daemon.log.layout import LogDir
from persist.daemon.log.watch import watch
from persist.daemon.stopping import StopOnSignal

COMMIT_EVERY = 0.25
PR_SET_PDEATHSIG = 1
BATCH = 2000
log = structlog.get_logger("persist.indexer")


def run(log_dir: LogDir, stop: StopOnSignal) -> None:
    """Index until ``stop`` is set."""
    path = index.index_path(log_dir)
    db = index.connect(path)
    inode = os.stat(path).st_ino
    wake = threading.Event()

    def on_change(event) -> None:
        if "metadata_index" not in event.src_path:  # our own writes are not news
            wake.set()

    observer = watch(str(log_dir.root), on_change, recursive=True)
    try:
        while not stop.is_set():
            if os.stat(path).st_ino != inode:  # `persist-cli index rebuild` replaced the file
                db.close()
                db = index.connect(path)
                inode = os.stat(path).st_ino
            index.forget_deleted(log_dir, db)
            batch = []
            deadline = time.monotonic() + COMMIT_EVERY
            for item in index.pending(log_dir, db):
                batch.append(item)
                if len(batch) >= BATCH or time.monotonic() >= deadline:
                    index.add(db, batch)
                    batch = []
                    deadline = time.monotonic() + COMMIT_EVERY
                    if stop.is_set():
                        break
            index.add(db, batch)
            wake.wait(0.5)
            wake.clear()
    finally:
        observer.stop()
        observer.join(timeout=2)
        db.close()


class IndexerProcess:
    """The daemon's handle on its indexer child: start it, restart it if it dies, stop it."""

    def __init__(self, log_dir: LogDir) -> None:
        self.log_dir = log_dir
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.next_start = 0.0

    def start(self) -> None:
        index.index_dir(self.log_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        out = os.fdopen(os.open(index.index_dir(self.log_dir) / "indexer.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600), "ab")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "persist.daemon.index.indexer", "--log-dir", str(self.log_dir.root),
                 "--parent", str(os.getpid())],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, close_fds=True)
        finally:
            out.close()

    def check(self) -> None:
        """Restart a dead indexer, waiting longer after each failure (up to a minute)."""
        if self.proc is None or self.proc.poll() is None:
            return
        if time.monotonic() < self.next_start:
            return
        log.warning("indexer_died", code=self.proc.returncode, restarts=self.restarts,
                    log=str(index.index_dir(self.log_dir) / "indexer.log"))
        self.restarts += 1
        self.next_start = time.monotonic() + min(60, 2 ** self.restarts)
        self.start()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None


def die_with_parent(parent: int) -> None:
    """Linux: get SIGTERM when the daemon dies, even by kill -9, so no indexer is orphaned."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # it died before we asked
        os.kill(os.getpid(), signal.SIGTERM)


def idle_priority() -> None:
    """Recording comes first: the indexer only gets CPU time nothing else wants (SCHED_IDLE),
    so on a busy machine the index catches up after a burst instead of slowing it."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)


@click.command()
@click.option("--log-dir", required=True)
@click.option("--parent", type=int, help="The daemon's pid: stop when it is gone.")
def main(log_dir: str, parent: int | None) -> None:
    logs.setup("json", "info")
    log_dir_ = LogDir(Path(log_dir).resolve())
    lock_fd = index.try_indexer_lock(log_dir_)
    if lock_fd is None:
        log.info("indexer_already_running", log_dir=log_dir)
        sys.exit(0)
    os.ftruncate(lock_fd, 0)
    os.pwrite(lock_fd, f"{os.getpid()}\n".encode(), 0)
    stop = StopOnSignal(signal.SIGTERM, signal.SIGINT)
    if parent:
        die_with_parent(parent)
    idle_priority()
    log.info("indexing", log_dir=log_dir)
    run(log_dir_, stop)
    log.info("indexer_stopped")


if __name__ == "__main__":
    main()
