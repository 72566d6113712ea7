"""The indexer process: keeps ``metadata_index/`` current while the daemon records.

A separate process (``python -m persist.daemon.index.indexer --log-dir D``),
started and restarted by the daemon (``child()``, supervised by
``persist.daemon.supervise``), so that it can never block the writer nor cost a
record if it crashes. It follows the JSONL (woken by watchdog, with a short poll
as a safety net), commits at least every ``COMMIT_EVERY`` seconds so a record
is searchable within a second of being written, and after a kill -9 resumes
from its last committed position. One indexer per log dir (an flock).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from pathlib import Path

import click

from persist.daemon import index, logs
from persist.daemon.log.layout import LogDir
from persist.daemon.log.lazylog import get_logger
from persist.daemon.log.watch import watch
from persist.daemon.stopping import StopOnSignal
from persist.daemon.supervise import Child

COMMIT_EVERY = 0.25
PR_SET_PDEATHSIG = 1
BATCH = 2000
log = get_logger("persist.indexer")


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


def child(log_dir: LogDir) -> Child:
    """The indexer as a child process the daemon supervises (``persist.daemon.supervise``)."""
    argv = [sys.executable, "-m", "persist.daemon.index.indexer", "--log-dir", str(log_dir.root),
            "--parent", str(os.getpid())]
    return Child("indexer", argv, index.index_dir(log_dir) / "indexer.log")


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
