"""The index's library side called directly: bringing it up to date, rebuilding it, and who holds ``indexer.lock``."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import orjson
import pytest

from persist.daemon import index
from persist.daemon.log import reader
from persist.daemon.log.errors import SearchIndexError
from persist.daemon.log.layout import LogDir
from persist.daemon.log.record import Message, encode
from persist.daemon.log.store import SegmentWriter


def build(root, n: int, rotate_at: int | None = None) -> LogDir:
    log = LogDir(root)
    log.create()
    writer = SegmentWriter(log, fsync="off")
    writer.open()
    for seq in range(1, n + 1):
        payload = orjson.dumps({"text": f"message number {seq}"})
        writer.append(encode(Message.from_frames([b"agent.chat", payload], time.time_ns()), seq,
                             {"sender": "a", "thread_id": "t"}))
        if seq == rotate_at:
            writer.rotate()
    writer.close()
    return log


def test_open_current_catches_up_when_no_indexer_runs(tmp_path):
    log = build(tmp_path / "logs", 3)
    index.open_current(log).close()  # there is no index yet: it is made, complete
    db = index.open_current(log)
    assert index.position(db)[0] == 3
    db.close()


def test_open_current_leaves_catching_up_to_a_running_indexer(tmp_path):
    log = build(tmp_path / "logs", 3)
    index.connect(index.index_path(log)).close()
    held = index.try_indexer_lock(log)
    try:
        db = index.open_current(log)
        assert index.position(db)[0] == 0
        db.close()
    finally:
        os.close(held)


def test_rebuild_indexes_every_segment_and_reports_progress_across_the_log(tmp_path):
    log = build(tmp_path / "logs", 12000, rotate_at=6000)
    seen: list[int] = []
    assert index.rebuild(log, seen.append) == 12000
    total = sum(n for _, n in reader.sizes(log))
    assert seen and seen == sorted(seen) and 0 < seen[-1] <= total
    assert seen[0] < total // 2 < seen[-1]  # positions are in the whole log, not per segment
    db = index.connect(index.index_path(log))
    assert db.execute("SELECT count(*) FROM records").fetchone()[0] == 12000
    db.close()
    assert index.rebuild(log) == 12000  # anew, never added twice


def test_take_indexer_lock_gives_up_on_a_holder_that_is_no_indexer(tmp_path):
    log = build(tmp_path / "logs", 1)
    held = index.try_indexer_lock(log)
    os.write(held, f"{os.getpid()}\n".encode())  # a pid, but not an indexer's: never signalled
    try:
        assert index.indexer_pid(log) is None
        with pytest.raises(SearchIndexError, match="another process.*not released within 0 s"):
            index.take_indexer_lock(log, timeout=0.2)
    finally:
        os.close(held)
    fd = index.take_indexer_lock(log, timeout=0.2)
    assert index.try_indexer_lock(log) is None
    os.close(fd)


def test_take_indexer_lock_stops_a_running_indexer(tmp_path):
    log = build(tmp_path / "logs", 1)
    os.close(index.try_indexer_lock(log))  # makes metadata_index/ and the lock file
    path = log.index / "indexer.lock"
    holder = subprocess.Popen([sys.executable, "-c", f"""
import fcntl, os, time  # stands in for persist.daemon.index.indexer
fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, str(os.getpid()).encode())
print("held", flush=True)
time.sleep(60)
"""], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"held\n"
        assert index.indexer_pid(log) == holder.pid
        fd = index.take_indexer_lock(log, timeout=10)
        os.close(fd)
        assert holder.wait(5) == -15
    finally:
        holder.kill()
        holder.wait()


def test_hits_come_back_with_their_records_from_the_jsonl(tmp_path):
    from persist.daemon.index.search import Filters, search, with_records

    log = build(tmp_path / "logs", 20, rotate_at=10)
    index.rebuild(log)
    db = index.connect(index.index_path(log))
    found = with_records(log, search(db, '"number 7" OR "number 17"', Filters(), 10, ("", "")))
    db.close()
    assert sorted(e.seq for _, e in found) == [7, 17]
    for hit, e in found:
        assert e.line == index.line_at(log, hit["segment"], hit["offset"])
