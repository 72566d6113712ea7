"""persist-daemon as a user runs it: a real broker, real publishers, real signals, real files."""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import threading
import time

import orjson

from persist.daemon.log import reader
from procs import Daemon, Publisher, heavy, memory_mb, process_gone, run, unavailable, wait_for

MIXED = [
    [b"agent.chat", b'{"sender":"claude_code","recipient":"gemini_cli","thread_id":"t-1","kind":"request","text":"review this"}'],
    [b"agent.chat", b'{\n  "pretty": true\n}\n'],
    [b"agent.bin", b"\xff\xfe\x00\x01 binary"],
    [b"agent.text", "plain text, not json — ünïcode".encode()],
    [b"agent.scalar", b"12345"],
    [b"agent.list", b'[1, "two", null]'],
    [b"agent.multi", b"{}", b"extra-1", b"\x00\x01", b""],
    [b"agent.empty", b""],
    [b'{"one": "frame"}'],
    [b"agent.badjson", b'{"unterminated": '],
    [b"agent.badutf8", b'{"a": "\xc3\x28"}'],
]


def user_frames(daemon):
    return [e.frames() for e in daemon.user_records()]


@heavy
def test_records_every_kind_of_message_exactly_once_byte_for_byte(start_daemon, publish):
    daemon = start_daemon()
    pubs = [publish() for _ in range(3)]
    for p in pubs:
        p.join(daemon)
    big = [b"agent.big", b'{"blob":"' + os.urandom(6 * 1024 * 1024).hex().encode() + b'"}']  # 12 MiB of JSON
    sent = []
    for i, frames in enumerate(MIXED * 3):
        tagged = frames if len(frames) == 1 else [frames[0] + b".%d" % i, *frames[1:]]
        pubs[i % 3].send(*tagged)
        sent.append(tagged)
    pubs[0].send(*big)
    sent.append(big)
    daemon.wait_records(len(sent))
    got = user_frames(daemon)
    key = lambda fs: b"\x00".join(fs)  # noqa: E731
    assert sorted(map(key, got)) == sorted(map(key, sent)), "every message once, byte for byte"
    seqs = [e.seq for e in daemon.records()]
    assert seqs == list(range(1, len(seqs) + 1)), "seq is strictly continuous"
    assert daemon.stop() == 0


def test_enrichment_from_the_payload(recorder):
    daemon, p = recorder()
    p.send(b"agent.chat", MIXED[0][1])
    (entry,) = daemon.wait_records(1)
    meta = entry.rec["meta"]
    assert meta["sender"] == "claude_code" and meta["recipient"] == "gemini_cli"
    assert meta["thread_id"] == "t-1" and meta["kind"] == "request" and meta["bytes"] == len(MIXED[0][1])
    daemon.stop()


@heavy
def test_sigterm_drains_everything_queued_within_five_seconds(recorder):
    daemon, p = recorder()
    n = 30_000
    for i in range(n):
        p.send(b"burst", b'{"i":%d,"pad":"%s"}' % (i, b"x" * 300))
    time.sleep(0.5)  # let the broker hand them over; the daemon is still busy writing
    t0 = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - t0 < 5.0
    recs = daemon.records()
    assert sum(1 for e in recs if e.rec["topic"] == "burst") == n
    assert recs[-1].rec["topic"] == "$persist/stop"
    assert not daemon.log.pid_file.exists() and not (daemon.log_dir / "daemon.sock").exists()


def test_kill_9_then_torn_line_then_restart_loses_nothing(recorder):
    daemon, p = recorder()
    for i in range(500):
        p.send(b"before", b'{"i":%d}' % i)
    daemon.wait_records(500)
    daemon.kill9()
    before = daemon.log.active.read_bytes()
    torn = b'{"v":1,"seq":999999,"id":"torn-in-the-mid'
    with open(daemon.log.active, "ab") as f:
        f.write(torn)
    last_seq = max(e.seq for e in daemon.records())

    daemon.start()
    assert daemon.log.active.read_bytes().startswith(before), "nothing written before the kill is lost"
    (quarantined,) = list(daemon.log.recovery.glob("torn-*"))
    assert quarantined.read_bytes() == torn
    p.send(b"after", b'{"i":1}')
    wait_for(lambda: any(e.rec["topic"] == "after" for e in daemon.records()), what="record after restart")
    recs = daemon.records()
    assert [e.seq for e in recs] == list(range(1, len(recs) + 1))
    topics = [e.rec["topic"] for e in recs if e.seq > last_seq]
    assert topics[:3] == ["$persist/recovered", "$persist/gap", "$persist/start"]
    recovered = next(e for e in recs if e.rec["topic"] == "$persist/recovered").rec["payload"]
    assert recovered["bytes_quarantined"] == len(torn) and recovered["resumed_after_seq"] == last_seq
    gap = next(e for e in recs if e.rec["topic"] == "$persist/gap").rec["payload"]
    assert gap["reason"] == "not_running"
    assert daemon.stop() == 0


def test_second_daemon_on_the_same_dir_exits_1_naming_the_holder(start_daemon, broker, log_dir):
    first = start_daemon()
    result = run("persist-daemon", "--log-dir", str(log_dir), "--connect", broker.backend)
    assert result.returncode == 1
    assert f"pid {first.proc.pid}" in result.stderr and "Traceback" not in result.stderr
    assert first.ping()


def test_files_and_control_socket_are_private(start_daemon):
    daemon = start_daemon()
    status = daemon.status()
    assert status["pid"] == daemon.proc.pid and status["last_seq"] >= 1
    assert int(daemon.log.pid_file.read_text()) == daemon.proc.pid
    assert stat.S_IMODE(os.stat(daemon.log_dir / "daemon.sock").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(daemon.log.active).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(daemon.log_dir).st_mode) == 0o700
    daemon.stop()


def test_logs_are_json_lines_when_not_on_a_tty(start_daemon):
    daemon = start_daemon()
    daemon.stop()
    events = [orjson.loads(line)["event"] for line in daemon.errors().splitlines()]
    assert "recording" in events and "stopped" in events


def test_broker_restart_is_recorded_as_a_gap_and_recording_resumes(recorder, broker):
    daemon, p = recorder()
    broker.restart()
    wait_for(lambda: any(e.rec["topic"] == "$persist/gap" for e in daemon.records()), what="gap record")
    gap = next(e for e in daemon.records() if e.rec["topic"] == "$persist/gap").rec["payload"]
    assert gap["reason"] == "bus_disconnected" and gap["endpoint"] == broker.backend
    p.join(daemon, topic=b"warmup.after-restart")
    daemon.stop()


def test_missing_sender_sequence_numbers_become_a_gap_record(recorder):
    daemon, p = recorder()
    for n in (1, 2, 3, 7, 8):
        p.send(b"agent.chat", b'{"sender":"planner","sender_seq":%d}' % n)
    daemon.wait_records(5)
    gaps = [e.rec["payload"] for e in daemon.records() if e.rec["topic"] == "$persist/gap"]
    assert gaps == [{"reason": "sender_seq", "sender": "planner", "missing_from": 4, "missing_to": 6,
                     "missing_count": 3, "missing": [4, 5, 6]}]
    daemon.stop()


def active_size(daemon) -> float:
    """The active segment's size; infinite for the moment a rotation has it renamed."""
    try:
        return daemon.log.active.stat().st_size
    except FileNotFoundError:
        return float("inf")


def test_rotation_by_size_keeps_seq_continuous(recorder):
    daemon, p = recorder("[storage]\nrotate_bytes = 20000\n")
    for batch in range(5):
        for i in range(100):
            p.send(b"r", b'{"batch":%d,"i":%d}' % (batch, i))
        daemon.wait_records(100 * (batch + 1))  # 100 records are more than 20000 bytes: the next check
        wait_for(lambda: active_size(daemon) < 20000, what="a rotation")  # (once a second) rotates
    daemon.stop()
    assert len(list(daemon.log.segments.iterdir())) >= 5
    seqs = [e.seq for e in reader.records(daemon.log)]
    assert seqs == list(range(1, len(seqs) + 1))


def test_sighup_reloads_subscriptions(recorder, workdir):
    daemon, p = recorder('[daemon]\nsubscribe = ["keep", "warmup"]\n')
    p.send(b"keep.a", b"{}")
    p.send(b"skip.a", b"{}")
    daemon.wait_records(1)
    (workdir / "persist.toml").write_text('[daemon]\nsubscribe = ["skip", "warmup"]\n')
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: daemon.try_status().get("subscribe") == ["skip", "warmup"], what="reload")
    p.join(daemon)
    p.send(b"keep.b", b"{}")
    p.send(b"skip.b", b"{}")
    wait_for(lambda: any(e.rec["topic"] == "skip.b" for e in daemon.records()), what="skip.b")
    daemon.stop()
    topics = {e.rec["topic"] for e in daemon.user_records()}
    assert {"keep.a", "skip.b"} <= topics and not {"skip.a", "keep.b"} & topics


def strace_runs() -> bool:
    """strace is installed and may trace here (a container can forbid ptrace)."""
    if shutil.which("strace") is None:
        return False
    try:
        probe = subprocess.run(["strace", "-f", "-qq", "-e", "trace=fdatasync", "-o", "/dev/null", "true"],
                               capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


# one line of ``strace -f -y``: "<tid>  call(<fd><<path>>, ..." or "<tid>  <... call resumed>..."
TRACE_START = re.compile(r"^(\d+)\s+(\w+)\(\d+<([^>]*)>")
TRACE_RESUMED = re.compile(r"^(\d+)\s+<\.\.\. (\w+) resumed>")
TRACE_RESULT = re.compile(r"\)\s+=\s+(-?\d+)")


def segment_syscalls(trace_text: str, segment: str) -> list[tuple[str, str]]:
    """The writes and fsyncs of ``segment`` in the order strace saw them, as
    ("write", "start") and ("sync", "done") events (a sync counts once it returned 0)."""
    events = []
    unfinished: dict[str, tuple[str, str]] = {}  # tid -> (call, path) of a call another thread interrupted
    for line in trace_text.splitlines():
        if m := TRACE_START.match(line):
            tid, call, path = m.groups()
            done = not line.rstrip().endswith("<unfinished ...>")
            if not done:
                unfinished[tid] = (call, path)
        elif m := TRACE_RESUMED.match(line):
            tid, call = m.groups()
            call, path = unfinished.pop(tid, (call, ""))
            done = True
        else:
            continue
        if not path.endswith(segment):
            continue
        if call in ("write", "writev", "pwrite64") and not TRACE_RESUMED.match(line):
            events.append(("write", "start"))
        elif call in ("fdatasync", "fsync") and done:
            result = TRACE_RESULT.search(line)
            if result and result.group(1) == "0":
                events.append(("sync", "done"))
    return events


@heavy
def test_fsync_always_syncs_every_batch_before_the_next_and_bind_mode(workdir, ctx):
    if not strace_runs():
        unavailable("strace is missing or may not trace on this machine (.ci/run installs it)")
    """Watched from outside with strace: every write of the active segment is followed by a
    finished fdatasync of it before the next write begins (``off`` never syncs; ``batch``
    writes several batches per sync)."""
    trace = workdir / "strace.txt"
    cfg = workdir / "persist.toml"
    cfg.write_text("[index]\nenabled = false\n")  # nothing else traced that the test does not need
    daemon = Daemon(workdir / "logs", "--config", str(cfg), "--bind", "tcp://127.0.0.1:*", "--fsync", "always",
                    wrapper=["strace", "-f", "-y", "-qq", "-e", "signal=none",
                             "-e", "trace=write,writev,pwrite64,fdatasync,fsync", "-o", str(trace), "--"])
    # with --bind and no --connect the daemon does not also dial the default broker
    daemon.start()
    pid = daemon.daemon_pid()
    try:
        status = daemon.status()
        (endpoint,) = status["endpoints"]
        assert endpoint.startswith("tcp://127.0.0.1:")
        pub = Publisher(ctx, endpoint)
        pub.join(daemon)
        n = 0
        for burst in range(15):  # bursts a little apart: batch mode would write several before one sync
            for i in range(20):
                pub.send(b"durable", b'{"burst":%d,"i":%d}' % (burst, i))
                n += 1
            time.sleep(0.01)
            status = daemon.status()
            assert status["committed_seq"] == status["last_seq"], f"a record counted before its fsync: {status}"
        daemon.wait_records(n, timeout=60)
        pub.close()
        os.kill(pid, signal.SIGTERM)
        assert daemon.proc.wait(30) == 0, daemon.errors()[-2000:]
    finally:
        if daemon.proc.poll() is None:
            if not process_gone(pid):
                os.kill(pid, signal.SIGKILL)
            daemon.proc.kill()
            daemon.proc.wait()
        daemon.stderr.close()
    recs = daemon.records()
    assert [e.seq for e in recs] == list(range(1, len(recs) + 1)) and recs[-1].rec["topic"] == "$persist/stop"
    assert sum(e.rec["topic"] == "durable" for e in recs) == n

    events = segment_syscalls(trace.read_text(), "/" + daemon.log.active.name)
    writes = sum(1 for kind, _ in events if kind == "write")
    syncs = sum(1 for kind, _ in events if kind == "sync")
    assert writes >= 3, f"strace saw {writes} writes of the segment: {events[:10]}"
    unsynced = False
    for k, (kind, _) in enumerate(events):
        if kind == "write":
            assert not unsynced, (f"write #{k} of the segment began before the previous one was fsynced "
                                  f"({writes} writes, {syncs} finished fsyncs)")
            unsynced = True
        else:
            unsynced = False
    assert not unsynced, "the last write was never fsynced"


@heavy
def test_several_publishers_in_parallel_lose_nothing(start_daemon, publish):
    daemon = start_daemon()
    pubs = [publish() for _ in range(4)]
    for p in pubs:
        p.join(daemon)

    def blast(k, p):
        for i in range(2000):
            p.send(b"par", b'{"sender":"p%d","sender_seq":%d}' % (k, i + 1))

    threads = [threading.Thread(target=blast, args=(k, p)) for k, p in enumerate(pubs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_for(lambda: sum(e.rec["topic"] == "par" for e in daemon.records()) == 8000, what="8000 records")
    assert not any(e.rec["topic"] == "$persist/gap" for e in daemon.records())
    daemon.stop()


def test_rotation_by_age(recorder):
    daemon, p = recorder("[storage]\nrotate_age_s = 1\n")
    for i in range(3):
        p.send(b"aged", b'{"i":%d}' % i)
        time.sleep(1.3)
    daemon.wait_records(3)
    daemon.stop()
    assert len(list(daemon.log.segments.iterdir())) >= 2, "segments older than rotate_age_s are closed"
    assert [e.seq for e in daemon.records()] == list(range(1, len(daemon.records()) + 1))


@heavy
def test_memory_a_burst_took_is_given_back(recorder):
    daemon, p = recorder()
    before = memory_mb(daemon.proc.pid, "VmRSS")
    payload = b'{"sender":"planner","text":"%s"}' % (b"x" * 4000)
    base = daemon.status()["recorded"]
    for _ in range(25_000):  # about 100 MB, faster than it can be recorded: it queues in the daemon
        p.send(b"burst", payload)
    wait_for(lambda: daemon.try_status().get("recorded", 0) >= base + 25_000, timeout=60, what="the burst recorded")
    peak = memory_mb(daemon.proc.pid, "VmHWM")  # and nothing more is sent: an empty queue says it is over
    assert peak - before > 40, "the burst did wait in the daemon's memory"
    wait_for(lambda: memory_mb(daemon.proc.pid, "VmRSS") < before + (peak - before) / 4,
             what=f"memory back near {before:.0f} MB after a {peak:.0f} MB peak")
    daemon.stop()


def test_a_log_that_cannot_be_written_never_stops_recording(broker, publish, log_dir):
    daemon = Daemon(log_dir, "--connect", broker.backend)
    daemon.proc = subprocess.Popen(daemon.args, stderr=subprocess.PIPE, env=daemon.env)
    try:
        wait_for(daemon.ping, what="daemon ping")
        p = publish()
        p.join(daemon)
        daemon.proc.stderr.close()  # whoever read the daemon's log has gone: every log line now fails
        daemon.proc.send_signal(signal.SIGHUP)  # a reload, logged
        p.send(b"after", b'{"still":"recorded"}')
        daemon.wait_records(1)
        assert daemon.proc.poll() is None and daemon.status()["last_seq"] > 0
    finally:
        daemon.proc.terminate()
        daemon.proc.wait(10)


@heavy
def test_reloads_under_load_lose_nothing(recorder):
    daemon, p = recorder()
    n = 20_000
    sender = threading.Thread(target=lambda: [p.send(b"load", b'{"i":%d}' % i) for i in range(n)])
    sender.start()
    while sender.is_alive():  # reload after reload while messages stream in
        daemon.proc.send_signal(signal.SIGHUP)
        time.sleep(0.01)
    got = daemon.wait_records(n, timeout=60)
    assert sorted(orjson.loads(e.frames()[1])["i"] for e in got) == list(range(n))
    daemon.stop()


@heavy
def test_a_storm_of_stop_signals_stops_the_daemon_cleanly(recorder):
    """Hundreds of SIGTERM/SIGINT while a burst is being written: exit 0, every record kept, a stop record."""
    daemon, p = recorder()
    n = 5000
    for i in range(n):
        p.send(b"storm", b'{"i":%d}' % i)
    time.sleep(0.2)  # the burst reaches the daemon; it is still writing it
    for i in range(300):
        try:
            os.kill(daemon.proc.pid, signal.SIGINT if i % 2 else signal.SIGTERM)
        except ProcessLookupError:
            break
    code = daemon.proc.wait(15)
    daemon.stderr.close()
    assert code == 0, f"a storm of stop signals must end in a clean exit 0, not {code}: {daemon.errors()[-2000:]}"
    assert "Traceback" not in daemon.errors()
    recs = daemon.records()
    assert [e.seq for e in recs] == list(range(1, len(recs) + 1)), "seq continuous"
    assert sorted(orjson.loads(e.frames()[1])["i"] for e in recs if e.rec["topic"] == "storm") == list(range(n))
    assert recs[-1].rec["topic"] == "$persist/stop", "the daemon wrote its stop record"
