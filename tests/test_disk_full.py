"""A full disk, for real: a small tmpfs the daemon records into, filled up and freed again.

Needs root (to mount). Where mounting is not allowed, the same guarantees are
still covered at the write layer by test_store.test_disk_full_leaves_no_partial_line.
"""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from procs import wait_for


@pytest.fixture
def small_fs(workdir):
    mnt = workdir / "small"
    mnt.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(path):
    """Write until the filesystem says ENOSPC."""
    with open(path, "wb", buffering=0) as f:
        block = b"\0" * 65536
        try:
            while True:
                f.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        try:
            while True:
                f.write(b"\0" * 64)
        except OSError:
            pass


def test_disk_full_spools_drops_with_a_gap_and_resumes_by_itself(recorder, small_fs):
    daemon, p = recorder("[storage]\nbacklog_bytes = 100000\n", log_dir=small_fs / "logs")
    filler = small_fs / "filler"
    fill(filler)

    n = 2000
    for i in range(n):
        p.send(b"full", b'{"i":%d,"pad":"%s"}' % (i, b"y" * 200))
    wait_for(lambda: daemon.status()["dropped"] > 0, what="the spool to fill and drop")
    status = daemon.status()
    assert status["disk_full"] and status["spooled"] > 0
    assert daemon.proc.poll() is None, "no crash"

    os.unlink(filler)
    wait_for(lambda: not daemon.status()["disk_full"], what="recording to resume")
    p.send(b"after", b"{}")
    wait_for(lambda: any(e.rec["topic"] == "after" for e in daemon.records()), what="a record after space returned")
    assert daemon.stop() == 0

    raw = daemon.log.active.read_bytes()
    assert raw.endswith(b"\n")
    recs = daemon.records()
    assert len(recs) == raw.count(b"\n"), "every line is a whole record"
    assert [e.seq for e in recs] == list(range(1, len(recs) + 1)), "seq continuous: dropped ones never got one"
    kept = sorted(int(e.rec["payload"]["i"]) for e in recs if e.rec["topic"] == "full")
    gap = next(e.rec["payload"] for e in recs if e.rec["topic"] == "$persist/gap")
    assert gap["reason"] == "disk_full"
    assert len(kept) + gap["dropped"] == n, "every message is either recorded or counted in the gap"
    assert kept == list(range(len(kept))), "what was kept is the oldest, in order"
