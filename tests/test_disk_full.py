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
import signal
import subprocess
import time

import pytest

from libdir import cli
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


def written(daemon, topic: str) -> int:
    """How many of the test's ``topic`` messages are in the files (a full tmpfs still fills its last page)."""
    return sum(e.rec["topic"] == topic for e in daemon.records())


def free_some(disk, daemon, nbytes: int) -> None:
    """Give back only ``nbytes``: a little space, not enough for everything held."""
    if isinstance(disk, Tmpfs):
        os.truncate(disk.filler, max(0, disk.filler.stat().st_size - nbytes))
    else:
        soft, hard = resource.prlimit(daemon.proc.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(daemon.proc.pid, resource.RLIMIT_FSIZE, (soft + nbytes, hard))


def test_a_full_disk_outlasts_checkpoints_and_a_little_space_resumes_a_little(recorder, full_disk):
    # no indexer: its writes would race the daemon for the little space given back
    daemon, p = recorder("[storage]\nbacklog_bytes = 2000000\n[index]\nenabled = false\n", "--checkpoint-interval",
                         "1", log_dir=full_disk.mnt / "logs")
    full_disk.fill(daemon)
    n = 2000
    for i in range(n):
        p.send(b"full", b'{"i":%d,"pad":"%s"}' % (i, b"y" * 200))
    wait_for(lambda: daemon.status()["spooled"] + written(daemon, "full") >= n, what="every message written or held")
    time.sleep(3.5)  # three timer checkpoints come due on the full disk
    os.kill(daemon.daemon_pid(), signal.SIGUSR1)
    time.sleep(0.5)
    status = daemon.status()
    assert daemon.proc.poll() is None, daemon.errors()
    assert status["disk_full"] and status["checkpoint_deferred"] in ("timer", "signal")

    held = status["spooled"]
    free_some(full_disk, daemon, 60_000)
    wait_for(lambda: 0 < daemon.status()["spooled"] < held, what="a little space to record a little")
    assert daemon.status()["disk_full"], "still full: the rest waits"

    full_disk.free(daemon)
    wait_for(lambda: not daemon.status()["disk_full"], what="recording to resume")
    wait_for(lambda: (daemon.status()["last_checkpoint"] or {}).get("last_seq", 0) >= held,
             what="the deferred checkpoint, once space returned")
    assert daemon.stop() == 0
    recs = daemon.records()
    assert [e.seq for e in recs] == list(range(1, len(recs) + 1))
    assert sorted(e.rec["payload"]["i"] for e in recs if e.rec["topic"] == "full") == list(range(n)), "nothing lost"
    verify = cli(daemon.log_dir, "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_sigterm_on_a_full_disk_counts_what_was_held(recorder, full_disk):
    daemon, p = recorder("[storage]\nbacklog_bytes = 2000000\n", log_dir=full_disk.mnt / "logs")
    full_disk.fill(daemon)
    n = 500
    for i in range(n):
        p.send(b"held", b'{"i":%d}' % i)
    wait_for(lambda: daemon.status()["spooled"] + written(daemon, "held") >= n, what="every message written or held")
    assert daemon.status()["spooled"], "the disk is full"
    assert daemon.stop() == 0, daemon.errors()
    full_disk.free(daemon)
    daemon.start()
    recs = daemon.records()
    assert [e.seq for e in recs] == list(range(1, len(recs) + 1)), "held lines never reached the disk: seq reused"
    if isinstance(full_disk, Tmpfs):  # the reserve is freed for the last word (a file-size limit frees nothing)
        gap = next(e.rec["payload"] for e in recs if e.rec["topic"] == "$persist/gap")
        assert gap["reason"] == "disk_full" and gap["dropped"] == gap["held_in_memory"] == n - written(daemon, "held")
        stops = [e for e in recs if e.rec["topic"] == "$persist/stop"]
        assert stops, "the stop record found room"
    else:
        gap = next(e.rec["payload"] for e in recs if e.rec["topic"] == "$persist/gap")
        assert gap["reason"] == "not_running", "no room for a count: the downtime is a gap"


def test_a_manifest_with_no_room_is_written_when_room_returns(recorder, workdir):
    mnt = workdir / "inodes"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,nr_inodes=64", "tmpfs", str(mnt)]).returncode:
        return test_a_full_disk_outlasts_checkpoints_and_a_little_space_resumes_a_little(recorder, FileSizeLimit(workdir))
    try:
        daemon, p = recorder(None, log_dir=mnt / "logs")
        wait_for(lambda: daemon.status()["indexer_pid"], what="the indexer's files")
        time.sleep(0.5)
        fillers = []
        while True:  # take every inode left: appends still work, a new file does not
            try:
                path = mnt / f"f{len(fillers)}"
                path.touch()
                fillers.append(path)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
        p.send(b"before", b"{}")
        os.kill(daemon.daemon_pid(), signal.SIGUSR1)
        announced = wait_for(lambda: [e.rec["payload"]["id"] for e in daemon.records()
                                      if e.rec["topic"] == "$persist/checkpoint"], what="the checkpoint record")
        time.sleep(0.5)
        assert daemon.proc.poll() is None, daemon.errors()
        assert not (daemon.log.checkpoints / f"{announced[-1]}.json").exists()
        for path in fillers[:8]:
            path.unlink()
        wait_for(lambda: (daemon.log.checkpoints / f"{announced[-1]}.json").exists(),
                 what="the manifest, once an inode is free")
        assert daemon.stop() == 0
        assert cli(daemon.log_dir, "verify").returncode == 0
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
