"""storage.retention: only whole closed segments go, each one logged, recorded and tombstoned."""

from __future__ import annotations

import errno
import os
import signal
import time

import orjson
import pytest

from persist.daemon.log import reader, retention
from persist.daemon.log.layout import LogDir
from libdir import cli
from procs import run, wait_for




@pytest.mark.parametrize(("text", "age", "size"), [
    ("30d", 30 * 86400, None), ("12h", 12 * 3600, None), ("90 m", 5400, None),
    ("20GiB", None, 20 * 2**30), ("500MB", None, 500 * 10**6), ("1.5 kib", None, 1536),
])  # fmt: skip
def test_policy_forms(text, age, size):
    policy = retention.parse(text)
    assert (policy.max_age_s, policy.max_bytes) == (age, size)
    assert retention.parse("") is None


def test_a_bad_retention_stops_with_the_key_named(workdir):
    result = run("persist-daemon", "--check-config", "--log-dir", str(workdir / "logs"),
                 env={"PERSIST_STORAGE_RETENTION": "forever"})
    assert result.returncode == 2
    assert "storage.retention" in result.stderr and "Traceback" not in result.stderr


def fill_segments(daemon, p, rounds: int) -> None:
    """Each round: 30 messages (more than a segment), then wait for the rotation."""
    def closed() -> int:  # segments ever closed, deleted ones included (by name: one being deleted counts once)
        names = {p.name.removesuffix(".deleted") for p in daemon.log.segments.iterdir()}
        return len({n for n in names if n.endswith(".jsonl")})

    for r in range(rounds):
        n = closed()
        for i in range(30):
            p.send(b"agent.chat", b'{"sender":"planner","text":"round%d item %d %s"}' % (r, i, b"x" * 150))
        wait_for(lambda: closed() > n, what="a rotation")


def test_size_retention_deletes_oldest_closed_segments_and_says_so(recorder):
    daemon, p = recorder('[storage]\nrotate_bytes = 4000\nretention = "40kB"\n')
    p.send(b"agent.chat", b'{"sender":"planner","text":"the very first words"}')
    daemon.wait_records(1)
    assert cli(daemon.log_dir, "checkpoints", "create", "--label", "early").returncode == 0
    fill_segments(daemon, p, 6)
    wait_for(lambda: list(daemon.log.segments.glob("*.deleted")), what="a deletion")
    daemon.stop()
    log = daemon.log
    stones = sorted(log.segments.glob("*.deleted"))
    kept = sorted(log.segments.glob("*.jsonl"))
    assert stones and kept, "old segments went, newer ones stayed"
    assert sum(p.stat().st_size for p in kept) <= 40_000, "the closed segments kept fit the limit"
    notes = [e.rec for e in reader.records(log) if e.rec["topic"] == "$persist/retention"]
    deleted_names = {orjson.loads(s.read_bytes())["segment"] for s in stones}
    recorded = {n["payload"]["segment"] for n in notes}  # older notes may have gone with later deletions
    assert recorded <= deleted_names and max(deleted_names) in recorded, "each deletion is recorded"
    assert all(n["payload"]["retention"] == "40kB" and n["payload"]["first_seq"] >= 1 for n in notes)
    oldest = min(int(s.name[4:20]) for s in kept)
    assert min(e.seq for e in reader.records(log)) == oldest, "what is left starts at a segment boundary"

    assert cli(daemon.log_dir, "verify").returncode == 0, "a deletion by retention is not damage"
    result = cli(daemon.log_dir, "restore", "early", "--out", str(daemon.log_dir.parent / "out"))
    assert result.returncode != 0 and "storage.retention" in result.stderr and "Traceback" not in result.stderr

    for rebuilt in (False, True):  # the index the daemon kept, then one rebuilt from what is left
        if rebuilt:
            assert cli(daemon.log_dir, "index", "rebuild").returncode == 0
        gone = cli(daemon.log_dir, "search", "very first words", "--json")
        assert gone.returncode == 1 and "very first words" not in gone.stdout, "search never shows deleted records"
    assert cli(daemon.log_dir, "search", "round5", "--json", "--limit", "100").stdout.count("\n") == 30


def test_age_retention_acts_on_reload_and_never_touches_the_active_segment(recorder, workdir):
    daemon, p = recorder("[storage]\nrotate_bytes = 4000\n")
    fill_segments(daemon, p, 3)
    closed = sorted(daemon.log.segments.glob("*.jsonl"))
    old = time.time() - 3 * 86400
    os.utime(closed[0], (old, old))
    (workdir / "persist.toml").write_text('[storage]\nrotate_bytes = 4000\nretention = "2d"\n')
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: not closed[0].exists(), what="the old segment deleted")
    assert all(c.exists() for c in closed[1:]) and daemon.log.active.exists()
    daemon.stop()
    assert retention.deleted(daemon.log, closed[0].name)["retention"] == "2d"


def test_a_deletion_cut_short_by_a_crash_is_finished_and_only_that(tmp_path):
    log = LogDir(tmp_path / "logs")
    log.create()
    seg = log.segments / "seg-0000000000000001.jsonl"
    seg.write_bytes(b'{"v":1,"seq":1}\n{"v":1,"seq":2}\n')
    stone = {"segment": seg.name, "first_seq": 1, "last_seq": 2, "bytes": seg.stat().st_size}
    retention.tombstone(log, seg.name).write_bytes(orjson.dumps({**stone, "last_seq": 3}))
    assert retention.apply(log, None) == [] and seg.exists(), "a segment that only shares the name stays"
    retention.tombstone(log, seg.name).write_bytes(orjson.dumps(stone))
    assert retention.apply(log, None) == [] and not seg.exists()


def test_a_full_disk_applies_retention_at_once(recorder, workdir):
    import resource

    daemon, p = recorder('[storage]\nrotate_bytes = 4000\nretention = "1h"\n')
    fill_segments(daemon, p, 3)
    oldest = sorted(daemon.log.segments.glob("*.jsonl"))[0]
    old = time.time() - 2 * 3600
    os.utime(oldest, (old, old))  # past retention, but the next regular pass is a minute away
    _, hard = resource.prlimit(daemon.proc.pid, resource.RLIMIT_FSIZE)
    # room for a tombstone, not for the next record (the active file is briefly absent while it rotates)
    def room():
        try:
            return daemon.log.active.stat().st_size + 2000
        except FileNotFoundError:
            return None

    limit = wait_for(room, what="the active file")
    resource.prlimit(daemon.proc.pid, resource.RLIMIT_FSIZE, (limit, hard))
    p.send(b"agent.chat", b'{"text":"%s"}' % (b"z" * 4000))  # refused: the disk is full
    wait_for(lambda: not oldest.exists(), what="retention applied as the disk filled")
    resource.prlimit(daemon.proc.pid, resource.RLIMIT_FSIZE, (hard, hard))
    wait_for(lambda: not daemon.status()["disk_full"], what="recording to resume")
    daemon.stop()
    assert retention.deleted(daemon.log, oldest.name)["retention"] == "1h"


def test_on_a_disk_with_no_room_for_a_tombstone_the_segment_goes_first(tmp_path, monkeypatch):
    log = LogDir(tmp_path / "logs")
    log.create()
    seg = log.segments / "seg-0000000000000001.jsonl"
    seg.write_bytes(b'{"v":1,"seq":1}\n{"v":1,"seq":2}\n')
    write, refused = retention.write_atomically, []

    def no_room_until_the_segment_is_gone(path, data):
        if seg.exists():
            refused.append(path)
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(path, data)

    monkeypatch.setattr(retention, "write_atomically", no_room_until_the_segment_is_gone)
    info = retention.delete(log, seg, retention.parse("1d"))
    assert refused and not seg.exists()
    assert retention.deleted(log, seg.name) == info and (info["first_seq"], info["last_seq"]) == (1, 2)
