"""A full disk, for real: the daemon's writes are refused by the kernel, then space returns.

Where the machine lets a test mount (root, as in CI), the log lives on a small
tmpfs that is filled with a file and freed again (ENOSPC). Elsewhere the
kernel's per-process file-size limit is lowered on the daemon (RLIMIT_FSIZE via
prlimit: writes fail with EFBIG, the same path) and raised again. No skip.
"""

from __future__ import annotations

import errno
import os
import resource
import subprocess

import pytest

from procs import wait_for


class Tmpfs:
    """A 4 MiB filesystem the log lives on; full when a filler file takes the rest."""

    def __init__(self, mnt) -> None:
        self.mnt = mnt
        self.filler = mnt / "filler"

    def fill(self, daemon) -> None:
        with open(self.filler, "wb", buffering=0) as f:
            for size in (65536, 64):
                try:
                    while True:
                        f.write(b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC

    def free(self, daemon) -> None:
        os.unlink(self.filler)


class FileSizeLimit:
    """The daemon may not grow its files past their current size (soft RLIMIT_FSIZE)."""

    def __init__(self, mnt) -> None:
        self.mnt = mnt

    def fill(self, daemon) -> None:
        _, hard = resource.prlimit(daemon.proc.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(daemon.proc.pid, resource.RLIMIT_FSIZE, (daemon.log.active.stat().st_size + 100, hard))

    def free(self, daemon) -> None:
        _, hard = resource.prlimit(daemon.proc.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(daemon.proc.pid, resource.RLIMIT_FSIZE, (hard, hard))


@pytest.fixture
def full_disk(workdir):
    mnt = workdir / "small"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True)
    yield Tmpfs(mnt) if mounted.returncode == 0 else FileSizeLimit(mnt)
    if mounted.returncode == 0:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_spools_drops_with_a_gap_and_resumes_by_itself(recorder, full_disk):
    daemon, p = recorder("[storage]\nbacklog_bytes = 100000\n", log_dir=full_disk.mnt / "logs")
    full_disk.fill(daemon)

    n = 2000
    for i in range(n):
        p.send(b"full", b'{"i":%d,"pad":"%s"}' % (i, b"y" * 200))
    wait_for(lambda: daemon.status()["dropped"] > 0, what="the spool to fill and drop")
    status = daemon.status()
    assert status["disk_full"] and status["spooled"] > 0
    assert daemon.proc.poll() is None, "no crash"

    full_disk.free(daemon)
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


def test_disk_full_by_file_size_limit(recorder, workdir):
    """The non-root mechanism, run everywhere so both paths stay tested."""
    test_disk_full_spools_drops_with_a_gap_and_resumes_by_itself(recorder, FileSizeLimit(workdir))
