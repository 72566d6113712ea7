"""kill -9 at random moments, a broker that dies, rotation and checkpoints under readers."""

from __future__ import annotations

import hashlib
import subprocess
import time

import orjson
import pytest

from chaoslib import ROUNDS, Load
from persist.daemon.log import reader
from persist.daemon.log.reader import lines_forward
from procs import BIN, heavy, run, wait_for

pytestmark = heavy  # under load by design: never beside another heavy test


def snapshot(daemon) -> dict[str, tuple[int, str]]:
    """Per segment (by its stable name): bytes of whole lines, and a hash of the last 64 KiB of them."""
    found = {}
    for name, path in ((seg.name, seg.path) for seg in reader.segments(daemon.log)):
        data = path.read_bytes()
        size = data.rfind(b"\n") + 1
        found[name] = (size, hashlib.sha256(data[max(0, size - 65536):size]).hexdigest())
    return found


def still_there(daemon, before: dict[str, tuple[int, str]]) -> None:
    """Every whole line that was in the files before is still there, byte for byte."""
    now = {seg.name: seg.path for seg in reader.segments(daemon.log)}
    for name, (size, digest) in before.items():
        assert name in now, f"segment {name} vanished"
        data = now[name].read_bytes()[:size]
        assert len(data) == size, f"segment {name} lost bytes: {len(data)} < {size}"
        assert hashlib.sha256(data[max(0, size - 65536):]).hexdigest() == digest, f"segment {name} changed"


chaos_timeout = pytest.mark.timeout(120 + ROUNDS * 6)


@chaos_timeout
def test_kill_9_rounds_under_load(recorder, rng, log_dir):
    daemon, p = recorder()
    with Load(p):
        for _ in range(ROUNDS):
            time.sleep(rng.uniform(0.05, 0.6))
            daemon.kill9()
            before = snapshot(daemon)
            daemon.start()
            still_there(daemon, before)
    daemon.stop()
    raw = [line for seg in reader.segments(daemon.log) for _, line in lines_forward(seg.path)]
    recs = [orjson.loads(line) for line in raw]  # zero corrupt lines: every line parses
    seqs = [r["seq"] for r in recs]
    assert seqs == list(range(1, len(seqs) + 1)), "no duplicate, no missing seq"
    downtime = [r for r in recs if r["topic"] == "$persist/gap" and r["payload"]["reason"] == "not_running"]
    assert len(downtime) == ROUNDS, "a gap record for every downtime"
    assert run("persist-cli", "verify", "--log-dir", str(log_dir)).returncode == 0


def test_broker_killed_and_restarted_under_load(recorder, broker):
    daemon, p = recorder()

    def outages() -> int:
        return sum(e.rec["topic"] == "$persist/gap" for e in daemon.records())

    with Load(p):
        for k in range(3):
            time.sleep(0.5)
            broker.restart()
            # the next outage only once this one is over (on a loaded machine two could merge into one)
            wait_for(lambda: outages() > k, timeout=30, interval=0.1, what=f"outage {k + 1} recorded")
        time.sleep(1.0)
    n_gaps = outages()
    assert n_gaps >= 3, "each outage is recorded"
    last = daemon.records()[-1].seq
    p.send(b"after", b"{}")
    wait_for(lambda: daemon.records()[-1].seq > last, what="recording to resume by itself")
    assert daemon.stop() == 0


def test_rotation_and_checkpoints_under_load_while_readers_read(recorder, log_dir):
    daemon, p = recorder("[storage]\nrotate_bytes = 200000\n", "--checkpoint-interval", "1")
    follow = subprocess.Popen([BIN / "persist-cli", "recent", "-n", "0", "--follow", "--json", "--log-dir",
                               str(log_dir)], stdout=subprocess.PIPE)
    exports, searches = 0, 0
    with Load(p) as load:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline or exports <= 3:  # six seconds, and at least four rounds of readers
            out = run("persist-cli", "export", "--log-dir", str(log_dir)).stdout
            for line in out.splitlines():
                orjson.loads(line)  # readers never see a partial line
            exports += 1
            result = run("persist-cli", "search", "load", "--json", "--limit", "5", "--log-dir", str(log_dir))
            assert result.returncode in (0, 1), result.stderr  # 1: the index may not exist yet
            searches += 1
    wait_for(lambda: sum(e.rec["topic"] == "load" for e in daemon.records()) >= load.sent, timeout=30,
             interval=0.3, what="the last messages in flight to arrive")  # in flight is not lost by us
    daemon.stop()
    follow.terminate()
    followed = [orjson.loads(line) for line in follow.stdout.read().splitlines()]
    assert len(list(daemon.log.segments.iterdir())) >= 3, "it rotated under load"
    assert len(list(daemon.log.checkpoints.iterdir())) >= 3
    assert followed and [r["seq"] for r in followed] == list(range(followed[0]["seq"], followed[-1]["seq"] + 1)), \
        "follow saw every record across rotations, in order"
    assert load.sent == sum(e.rec["topic"] == "load" for e in daemon.records()), "the writer lost nothing"
    assert run("persist-cli", "verify", "--log-dir", str(log_dir)).returncode == 0
    assert exports > 3 and searches > 3


@chaos_timeout
def test_kill_9_during_rotation_and_checkpoints_then_verify(recorder, log_dir, rng):
    daemon, p = recorder("[storage]\nrotate_bytes = 50000\n", "--checkpoint-interval", "1")
    with Load(p):
        for _ in range(ROUNDS):
            time.sleep(rng.uniform(0.8, 1.6))  # straddles the once-a-second rotation and checkpoint
            daemon.kill9()
            daemon.start()
    daemon.stop()
    result = run("persist-cli", "verify", "--log-dir", str(log_dir))
    assert result.returncode == 0, result.stdout
