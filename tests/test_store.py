"""The format library: append, rotate, repair, read forward and backward."""

from __future__ import annotations

import errno
import os
import stat
import time

import pytest

from persist.daemon.log import reader
from persist.daemon.log.layout import LogDir
from persist.daemon.log.record import Message, encode
from persist.daemon.log.store import DiskFull, SegmentWriter, repair_tail


def line(seq: int, text: str = "hello") -> bytes:
    return encode(Message.from_frames([b"t", f'{{"n":{seq},"text":"{text}"}}'.encode()], time.time_ns()), seq, {})


@pytest.fixture
def log(tmp_path):
    d = LogDir(tmp_path / "logs")
    d.create()
    return d


def write(log, seqs, writer=None):
    w = writer or SegmentWriter(log)
    if writer is None:
        w.open()
    w.append(b"".join(line(s) for s in seqs))
    w.commit()
    return w


def test_modes_are_private(log):
    write(log, [1])
    assert stat.S_IMODE(os.stat(log.active).st_mode) == 0o600
    for d in (log.root, log.segments, log.recovery):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700


def test_rotate_keeps_every_record_in_order(log):
    w = write(log, range(1, 4))
    closed = w.rotate()
    assert closed.name == "seg-0000000000000001.jsonl"
    w.append(line(4) + line(5))
    w.rotate()
    w.append(line(6))
    w.close()
    assert [e.seq for e in reader.records(log)] == [1, 2, 3, 4, 5, 6]
    assert [e.seq for e in reader.records_backward(log)] == [6, 5, 4, 3, 2, 1]
    assert [e.seq for e in reader.records(log, after_seq=4)] == [5, 6]
    assert len(list(log.segments.iterdir())) == 2


def test_readers_never_see_a_partial_line(log):
    w = write(log, [1, 2])
    with open(log.active, "ab") as f:
        f.write(line(3)[:25])  # a write in progress
    assert [e.seq for e in reader.records(log)] == [1, 2]
    assert [e.seq for e in reader.records_backward(log)] == [2, 1]
    w.close()


@pytest.mark.parametrize("chunk", [7, 64, 1 << 20])
def test_backward_across_chunk_boundaries(log, monkeypatch, chunk):
    monkeypatch.setattr(reader, "CHUNK", chunk)
    write(log, range(1, 40)).close()
    assert [e.seq for e in reader.records_backward(log)] == list(range(39, 0, -1))
    assert [e.seq for e in reader.records(log)] == list(range(1, 40))


@pytest.mark.parametrize(
    "torn",
    [b'{"v":1,"seq":4,"id":"x', b"\x00" * 300, b'garbage\n\x00\x00', b"not json at all\n"],
    ids=["half a line", "zeros after power loss", "garbage then zeros", "a whole bad line"],
)
def test_repair_quarantines_the_torn_tail(log, torn):
    write(log, [1, 2, 3]).close()
    whole = log.active.read_bytes()
    with open(log.active, "ab") as f:
        f.write(torn)
    report = repair_tail(log.active, log.recovery)
    assert log.active.read_bytes() == whole
    assert report.quarantined.read_bytes() == torn, "the torn bytes are kept, not deleted"
    assert report.bytes == len(torn)
    assert repair_tail(log.active, log.recovery) is None, "repair is idempotent"


def test_repair_of_a_file_with_no_whole_line(log):
    log.active.write_bytes(b'{"v":1,"se')
    report = repair_tail(log.active, log.recovery)
    assert log.active.read_bytes() == b"" and report.bytes == 10


def test_disk_full_leaves_no_partial_line(log, monkeypatch):
    w = write(log, [1, 2])
    before = log.active.read_bytes()
    real_write = os.write

    def half_then_enospc(fd, data):
        if fd == w.fd:
            if not getattr(half_then_enospc, "done", False):
                half_then_enospc.done = True
                return real_write(fd, bytes(data[:10]))  # a short write...
            raise OSError(errno.ENOSPC, "No space left on device")  # ...then the disk is full
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", half_then_enospc)
    with pytest.raises(DiskFull):
        w.append(line(3) + line(4))
    monkeypatch.undo()
    assert log.active.read_bytes() == before
    w.append(line(3))
    w.close()
    assert [e.seq for e in reader.records(log)] == [1, 2, 3]


def test_group_commit_on_the_background_thread(log):
    w = write(log, [1])
    for seq in (2, 3):  # the second merges with the fsync in flight, or follows it
        w.append(line(seq))
        w.commit(seq, wait=False)
    w.background.wait()
    assert w.durable == 3 and w.background.thread.name == "persist-fsync"
    w.append(line(4))
    w.commit(4)
    assert w.durable == 4
    w.close()
    assert [e.seq for e in reader.records(log)] == [1, 2, 3, 4]


def test_a_failed_background_fsync_is_raised_and_never_retried(log):
    from persist.daemon.log.store import FsyncFailed

    w = write(log, [1])
    w.append(line(2))
    r, not_a_file = os.pipe()  # fdatasync on a pipe fails for real (EINVAL)
    real_fd, w.fd = w.fd, not_a_file
    w.commit(2, wait=False)
    with pytest.raises(FsyncFailed, match="current_session.jsonl"):
        w.background.wait()
    with pytest.raises(FsyncFailed):
        w.commit(2, wait=False)
    assert w.durable == 0, "nothing claimed durable after a failed fsync"
    w.fd = real_fd
    for fd in (r, not_a_file):
        os.close(fd)
