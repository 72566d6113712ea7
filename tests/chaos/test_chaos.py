"""kill -9 at random moments, a broker that dies, rotation and checkpoints under readers."""

from __future__ import annotations

import subprocess
import time

import orjson

from chaoslib import ROUNDS, Load
from persist.daemon.reader import lines_forward
from procs import BIN, run, wait_for


def whole_lines(data: bytes) -> bytes:
    return data[: data.rfind(b"\n") + 1]


def test_kill_9_rounds_under_load(recorder, rng, log_dir):
    daemon, p = recorder()
    with Load(p):
        for _ in range(ROUNDS):
            time.sleep(rng.uniform(0.05, 0.6))
            daemon.kill9()
            before = whole_lines(daemon.log.active.read_bytes())
            daemon.start()
            after = daemon.log.active.read_bytes()
            assert after.startswith(before), "every record that reached the file before the kill is still there"
    daemon.stop()
    raw = [line for _, line in lines_forward(daemon.log.active)]
    recs = [orjson.loads(line) for line in raw]  # zero corrupt lines: every line parses
    seqs = [r["seq"] for r in recs]
    assert seqs == list(range(1, len(seqs) + 1)), "no duplicate, no missing seq"
    downtime = [r for r in recs if r["topic"] == "$persist/gap" and r["payload"]["reason"] == "not_running"]
    assert len(downtime) == ROUNDS, "a gap record for every downtime"
    assert run("persist-cli", "verify", "--log-dir", str(log_dir)).returncode == 0


def test_broker_killed_and_restarted_under_load(recorder, broker):
    daemon, p = recorder()
    with Load(p):
        for _ in range(3):
            time.sleep(0.5)
            broker.restart()
        time.sleep(1.0)
    n_gaps = sum(e.rec["topic"] == "$persist/gap" for e in daemon.records())
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
        while time.monotonic() < deadline:
            out = run("persist-cli", "export", "--log-dir", str(log_dir)).stdout
            for line in out.splitlines():
                orjson.loads(line)  # readers never see a partial line
            exports += 1
            result = run("persist-cli", "search", "load", "--json", "--limit", "5", "--log-dir", str(log_dir))
            assert result.returncode in (0, 1), result.stderr  # 1: the index may not exist yet
            searches += 1
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
