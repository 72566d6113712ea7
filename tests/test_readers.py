"""Readers against rotation and hostile records: real daemons and real persist-cli processes for the
rotation race and what comes off the bus; persist-cli in-process over logs written by hand for the rest."""

from __future__ import annotations

import fcntl
import os
import stat
import subprocess
import threading
import time

import orjson

from persist.daemon import index
from persist.daemon.log import reader
from persist.daemon.log.follow import follow
from persist.daemon.log.layout import LogDir
from persist.daemon.log.record import frames_sha256
from libdir import cli
from procs import heavy, run, wait_for


def cli_process(log_dir, *args, **kw):
    """``persist-cli`` as a process of its own (readers racing the daemon from outside)."""
    return run("persist-cli", *args, "--log-dir", str(log_dir), **kw)


def file_lines(log: LogDir) -> dict[int, bytes]:
    """seq → the exact line, from every segment file."""
    out = {}
    for seg in reader.segments(log):
        for _, line in reader.lines_forward(seg.path):
            if (e := reader.entry(line, seg.path)) is not None:
                out[e.seq] = line
    return out


def make_line(seq: int, topic: bytes, payload: bytes, **meta) -> bytes:
    """A record line as the daemon writes one, payload verbatim (for logs built by hand)."""
    meta = {"sender": "tester", "bytes": len(payload), "sha256": frames_sha256([topic, payload]), **meta}
    return b'{"v":1,"seq":%d,"id":"0","received_at":"2026-12-01T10:00:%02d.000000Z","topic":%b,"meta":%b,"payload":%b}\n' % (
        seq, seq % 60, orjson.dumps(topic.decode()), orjson.dumps(meta), payload)


def nested(depth: int, inner: bytes = b'"deep"') -> bytes:
    return b'{"a":' * depth + inner + b"}" * depth


def written_log(root, lines: list[bytes]) -> LogDir:
    log = LogDir(root)
    log.create()
    log.active.write_bytes(b"".join(lines))
    return log


# --- item 8: every reader sees a consistent log while the daemon rotates -----------------------


@heavy
def test_export_and_search_never_skip_or_misplace_a_record_while_segments_rotate(recorder):
    daemon, p = recorder("[storage]\nrotate_bytes = 40000\n")
    stop = threading.Event()

    def load():
        i = 0
        while not stop.is_set():
            for _ in range(40):
                i += 1
                p.send(b"agent.chat", b'{"sender":"a","text":"token number %d %s"}' % (i, b"x" * 400))
            time.sleep(0.02)

    exports, hits, lib_runs = [], [], []

    def exporter():
        while not stop.is_set():
            result = cli_process(daemon.log_dir, "export", "--format", "jsonl")
            assert result.returncode == 0, result.stderr
            exports.append(result.stdout.encode())

    def searcher():
        while not stop.is_set():
            result = cli_process(daemon.log_dir, "search", "token", "--json", "--limit", "50")
            if result.returncode == 0:
                hits.extend(result.stdout.encode().splitlines(keepends=True))

    threads = [threading.Thread(target=f) for f in (load, exporter, searcher)]
    for t in threads:
        t.start()
    def raced_enough() -> bool:  # rotations under every kind of reader, several times over
        return len(reader.closed_segments(daemon.log)) >= 6 and len(exports) >= 4 and len(hits) >= 100

    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and not raced_enough():
            # the library itself, forward and backward, as fast as it goes
            forward = [e.seq for e in reader.records(daemon.log)]
            assert forward == list(range(1, len(forward) + 1))
            backward = [e.seq for e in reader.records_backward(daemon.log)]
            assert backward == list(range(len(backward), 0, -1))
            lib_runs.append(len(forward))
    finally:
        stop.set()
        for t in threads:
            t.join()
    daemon.stop()
    files = file_lines(daemon.log)
    rotated = len(reader.closed_segments(daemon.log))
    assert rotated >= 5, f"only {rotated} rotations: the race was not exercised"
    assert len(exports) >= 3 and hits, (len(exports), len(hits))
    for out in exports:
        lines = out.splitlines(keepends=True)
        seqs = [orjson.loads(x)["seq"] for x in lines]
        assert seqs == list(range(1, len(seqs) + 1)), "an export skipped records"
        assert all(files[s] == x for s, x in zip(seqs, lines)), "an export line differs from the file"
    for line in hits:
        assert files[orjson.loads(line)["seq"]] == line, "a search hit printed another record"


def test_line_at_finds_a_segment_active_or_rotated(tmp_path):
    log = written_log(tmp_path / "logs", [make_line(1, b"t", b'{"text":"one"}'), make_line(2, b"t", b'{"text":"two"}')])
    ends = [(x.segment, x.end) for x in reader.lines(log)]
    assert ends[0][0] == "seg-0000000000000001.jsonl"
    assert index.line_at(log, *ends[1]) == make_line(2, b"t", b'{"text":"two"}')
    os.rename(log.active, log.segments / ends[0][0])  # rotated
    log.active.write_bytes(make_line(3, b"t", b'{"text":"three"}'))
    assert index.line_at(log, *ends[1]) == make_line(2, b"t", b'{"text":"two"}')
    assert index.line_at(log, "seg-0000000000000003.jsonl", len(make_line(3, b"t", b'{"text":"three"}'))) == \
        make_line(3, b"t", b'{"text":"three"}')
    assert index.line_at(log, "seg-0000000000000009.jsonl", 10) is None


# --- item 1, reader side: payloads nested too deep to re-serialise ------------------------------


def test_a_deeply_nested_payload_from_the_bus_breaks_no_reader_and_not_the_indexer(recorder, workdir):
    daemon, p = recorder()
    deep = nested(300, b'{"note":"abyssal"}')
    p.send(b"agent.deep", deep)
    p.send(b"agent.chat", b'{"sender":"claude","thread_id":"t-1","text":"after the deep one: sentinel"}')
    daemon.wait_records(2)
    found = wait_for(lambda: (r := cli(daemon.log_dir, "search", "sentinel", "--json")).returncode == 0 and r.stdout,
                     timeout=15, what="the indexer to index past the deep record")
    assert b"sentinel" in found.encode()
    assert daemon.proc.poll() is None
    assert cli(daemon.log_dir, "threads", "--json").returncode == 0
    for fmt in ("markdown", "csv", "jsonl"):
        result = cli(daemon.log_dir, "export", "--format", fmt)
        assert result.returncode == 0 and "Traceback" not in result.stderr, (fmt, result.stderr[-500:])
        assert "abyssal" in result.stdout
    assert cli(daemon.log_dir, "restore", "latest", "--print").returncode in (0, 2)
    daemon.stop()
    rebuilt = cli(daemon.log_dir, "index", "rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert cli(daemon.log_dir, "search", "sentinel", "--json").returncode == 0


def test_lines_too_deep_to_parse_or_serialise_written_into_a_log_dir(workdir):
    lines = [make_line(1, b"t", b'{"text":"hello first"}'),
             make_line(2, b"t", nested(600, b'{"text":"chasm"}')),   # parses, cannot be re-serialised
             make_line(3, b"t", nested(1100)),                       # the parser itself refuses it
             make_line(4, b"t", b'{"sender":"x","text":"hello last"}')]
    log = written_log(workdir / "logs", lines)
    for fmt in ("markdown", "csv", "jsonl"):
        result = cli(log.root, "export", "--format", fmt)
        assert result.returncode == 0, (fmt, result.stderr[-500:])
    assert "chasm" in cli(log.root, "export", "--format", "markdown").stdout
    assert cli(log.root, "recent", "--json").returncode == 0
    following = follow(log, after_seq=2, poll=0.1)
    assert next(following).seq == 4, "recent --follow steps over a line it cannot parse"
    following.close()
    assert cli(log.root, "index", "rebuild").returncode == 0
    got = cli(log.root, "search", "hello", "--json")
    assert sorted(orjson.loads(x)["seq"] for x in got.stdout.splitlines()) == [1, 4]
    assert cli(log.root, "search", "chasm", "--json").returncode == 0
    assert cli(log.root, "threads").returncode == 0
    result = cli(log.root, "verify")
    assert result.returncode == 1 and "current_session.jsonl:3" in result.stdout and "not a whole record" in result.stdout


# --- item 11: verify, rebuild, modes ------------------------------------------------------------


def test_verify_reports_a_torn_tail_and_a_record_whose_frames_changed(workdir):
    good = [make_line(i, b"t", b'{"text":"line %d"}' % i) for i in (1, 2)]
    log = written_log(workdir / "logs", good)
    assert cli(log.root, "verify").returncode == 0
    with open(log.active, "ab") as f:
        f.write(b'{"v":1,"seq":3,"id":"0","rece')
    result = cli(log.root, "verify")
    assert result.returncode == 1 and "current_session.jsonl: 29 torn byte(s)" in result.stdout
    assert "persist-cli recover" in result.stdout
    assert cli(log.root, "recover").returncode == 0
    assert cli(log.root, "verify").returncode == 0
    log.active.write_bytes(good[0] + good[1].replace(b"line 2", b"line X"))
    result = cli(log.root, "verify")
    assert result.returncode == 1 and "seq 2: its frames do not match its meta.sha256" in result.stdout


def test_index_rebuild_never_signals_a_process_that_reused_a_stale_indexer_pid(workdir):
    log = written_log(workdir / "logs", [make_line(1, b"t", b'{"text":"hello"}')])
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        index.index_dir(log).mkdir(mode=0o700)
        lock_path = index.index_dir(log) / "indexer.lock"
        lock_path.write_text(f"{bystander.pid}\n")  # left by an indexer long dead; the pid now is someone else's
        fd = os.open(lock_path, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)  # held for a moment, as a search catching the index up does
        threading.Timer(1.0, os.close, [fd]).start()
        result = cli(log.root, "index", "rebuild")
        assert result.returncode == 0, result.stderr
        assert bystander.poll() is None, "index rebuild killed an unrelated process"
    finally:
        bystander.kill()
        bystander.wait()


def test_exports_and_the_index_files_are_private(workdir):
    log = written_log(workdir / "logs", [make_line(1, b"t", b'{"text":"secret"}')])
    out = workdir / "export.jsonl"
    assert cli(log.root, "export", "-o", str(out)).returncode == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    loose = workdir / "loose.jsonl"
    assert cli(log.root, "export", "-o", str(loose), "--mode", "644").returncode == 0
    assert stat.S_IMODE(loose.stat().st_mode) == 0o644
    assert cli(log.root, "index", "rebuild").returncode == 0
    db = index.connect(index.index_path(log))  # keeps -wal and -shm in place while open
    db.execute("INSERT INTO state VALUES ('probe', 1)")
    for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
        path = index.index_dir(log) / name
        assert path.exists() and stat.S_IMODE(path.stat().st_mode) == 0o600, name
    db.close()


# --- item 12, index side: replays are hidden unless asked ---------------------------------------


def test_search_thread_and_threads_hide_replays_unless_asked(workdir):
    body = b'{"sender":"claude","thread_id":"fix-9","text":"the replayed word zephyr"}'
    log = written_log(workdir / "logs", [make_line(1, b"agent.chat", body, thread_id="fix-9"),
                                         make_line(2, b"agent.chat", body, thread_id="fix-9", replay_of=1)])

    def seqs(*args):
        result = cli(log.root, *args)
        return [orjson.loads(x)["seq"] for x in result.stdout.splitlines()]

    assert cli(log.root, "index", "rebuild").returncode == 0
    assert seqs("search", "zephyr", "--json") == [1]
    assert sorted(seqs("search", "zephyr", "--json", "--include-replays")) == [1, 2]
    assert seqs("thread", "fix-9", "--format", "json") == [1]
    assert seqs("thread", "fix-9", "--format", "json", "--include-replays") == [1, 2]
    threads = [orjson.loads(x) for x in cli(log.root, "threads", "--json").stdout.splitlines()]
    assert [(t["thread_id"], t["turns"]) for t in threads] == [("fix-9", 1)]
    threads = [orjson.loads(x) for x in cli(log.root, "threads", "--json", "--include-replays").stdout.splitlines()]
    assert [(t["thread_id"], t["turns"]) for t in threads] == [("fix-9", 2)]


def test_a_file_only_read_wakes_no_watcher_and_an_idle_indexer_stays_idle(recorder, tmp_path):
    """watchdog reports files opened and closed unwritten too: the indexer, which reads the log whenever it is
    woken, woke itself by reading it and spun a whole core on an idle daemon (107 % CPU, for ever)."""
    from persist.daemon.log.watch import watch

    seen: list[str] = []
    (tmp_path / "f").write_bytes(b"x")
    observer = watch(str(tmp_path), lambda event: seen.append(event.event_type))
    try:
        time.sleep(0.3)
        for _ in range(5):
            (tmp_path / "f").read_bytes()
        time.sleep(0.5)
        assert seen == [], "reading a file is no change"
        with open(tmp_path / "f", "ab") as f:
            f.write(b"y")
        wait_for(lambda: "modified" in seen, what="the write seen")
    finally:
        observer.stop()
        observer.join(timeout=2)

    daemon, _ = recorder()
    indexer = daemon.status()["indexer_pid"]
    time.sleep(1.0)  # the indexer has caught up: from here the daemon is idle

    def cpu_s() -> float:
        fields = open(f"/proc/{indexer}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    before = cpu_s()
    time.sleep(3.0)
    assert cpu_s() - before < 1.0, "an idle indexer sleeps until the log changes"
