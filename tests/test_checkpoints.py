"""Checkpoints and restore. What a real daemon checkpointed (every second) is recorded once per
module and read by every test that only reads it (a private copy for those that edit it); the
timer, SIGUSR1, shutdown, in-place restore and the running hasher are each watched on a daemon
of their own; a closed segment is cut by the format library."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from pathlib import Path

import orjson
import pytest
import zmq

from libdir import Built, cli, copy_log
from persist.daemon.log import checkpoints as cps
from persist.daemon.log import reader
from persist.daemon.log.layout import LogDir
from procs import Broker, Daemon, Publisher, eventually, process_gone, short_tmpdir, wait_for


pytestmark = pytest.mark.xdist_group("checkpoints")  # one worker records the module's session, once


def manifests(log_dir):
    return cps.listing(LogDir(log_dir))


def three_bursts(daemon, p, checkpoint) -> None:
    """30 messages in three bursts, each followed by a checkpoint (``checkpoint(n)``: until one more than n)."""
    for burst in range(3):
        for i in range(10):
            p.send(b"agent.chat", b'{"sender":"a%d","text":"burst %d msg %d"}' % (burst, burst, i))
        daemon.wait_records(10 * (burst + 1))
        checkpoint(len(manifests(daemon.log_dir)))


@pytest.fixture
def signalled(recorder):
    """A recording daemon, 30 messages in three bursts, each followed by a SIGUSR1 checkpoint (no timer waits)."""
    daemon, p = recorder()

    def by_signal(n):
        daemon.proc.send_signal(signal.SIGUSR1)
        wait_for(lambda: len(manifests(daemon.log_dir)) > n, what="a SIGUSR1 checkpoint")

    three_bursts(daemon, p, by_signal)
    return daemon, p


@pytest.fixture(scope="module")
def session():
    """What one real daemon recorded, checkpointing every second, then stopped (shutdown checkpoint
    included): shared by the tests that only read it. Its own broker, context and dir."""
    root = short_tmpdir()
    ctx = zmq.Context()
    broker = Broker()
    daemon = Daemon(root / "logs", "--connect", broker.backend, "--checkpoint-interval", "1").start()
    try:
        p = Publisher(ctx, broker.frontend)
        p.join(daemon)
        three_bursts(daemon, p,
                     lambda n: wait_for(lambda: len(manifests(daemon.log_dir)) > n, what="a timer checkpoint"))
        before_quiet = manifests(daemon.log_dir)
        time.sleep(2.5)  # more than two intervals with nothing new
        daemon.quiet = (before_quiet, manifests(daemon.log_dir))
        p.close()
        assert daemon.stop() == 0
        yield daemon
    finally:
        if daemon.proc.poll() is None:
            daemon.kill9()
        broker.kill()
        ctx.destroy(linger=0)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def session_copy(session, workdir):
    """A private copy of the session's log dir, for a test that edits it."""
    return copy_log(session.log_dir, workdir / "logs")


def test_timer_checkpoints_only_when_something_new_arrived(session):
    """While the session's daemon ran: a timer checkpoint after each burst, none in 2.5 s without new records."""
    before, after = session.quiet
    assert len(before) >= 3 and {m["reason"] for m in before} == {"timer"}
    assert after == before, "no new records, no new checkpoint"


def test_signal_label_and_shutdown_checkpoints(signalled):
    daemon, _ = signalled
    daemon.proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: manifests(daemon.log_dir)[-1]["reason"] == "signal", what="SIGUSR1 checkpoint")
    result = cli(daemon.log_dir, "checkpoints", "create", "--label", "before-refactor")
    assert result.returncode == 0 and "before-refactor" in result.stdout
    assert manifests(daemon.log_dir)[-1]["label"] == "before-refactor"
    assert daemon.stop() == 0
    last = manifests(daemon.log_dir)[-1]
    assert last["reason"] == "shutdown"
    recs = daemon.records()
    assert recs[-1].rec["topic"] == "$persist/stop" and last["last_seq"] == recs[-1].seq - 1


def test_manifests_chain_and_hash_exactly_what_they_name(session):
    daemon = session
    items = manifests(daemon.log_dir)
    assert {m["reason"] for m in items} == {"timer", "shutdown"} and len(items) >= 4
    assert items[0]["prev"] is None
    for prev, m in zip(items, items[1:]):
        assert m["prev"] == prev["id"] and m["prev_chain"] == prev["chain"]
    for m in items:
        (seg,) = m["segments"]
        data = daemon.log.active.read_bytes()[: seg["bytes"]]
        assert hashlib.sha256(data).hexdigest() == seg["sha256"]
        assert data.count(b"\n") == m["message_count"] == m["last_seq"]
    assert cli(daemon.log_dir, "verify").returncode == 0


def test_verify_catches_an_edited_byte_and_an_edited_manifest(session_copy):
    log = session_copy
    assert cli(log.root, "verify").returncode == 0
    data = bytearray(log.active.read_bytes())
    i = data.index(b"burst 0 msg 3")
    data[i] = ord("B")
    log.active.write_bytes(bytes(data))
    result = cli(log.root, "verify")
    assert result.returncode == 1 and "changed in its first" in result.stdout
    data[i] = ord("b")
    log.active.write_bytes(bytes(data))
    assert cli(log.root, "verify").returncode == 0

    path = log.checkpoints / f"{manifests(log.root)[0]['id']}.json"
    m = json.loads(path.read_text())
    m["last_seq"] += 1
    path.write_text(json.dumps(m))
    result = cli(log.root, "verify")
    assert result.returncode == 1 and "manifest was edited" in result.stdout


def test_verify_catches_an_edit_in_a_closed_segment(workdir):
    built = Built(workdir / "logs")
    for i in range(40):
        built.send(b"r", b'{"text":"%s %d"}' % (b"z" * 100, i))
        if built.writer.size >= 3000:  # rotate_bytes = 3000
            built.rotate()
    built.close()
    assert len(list(built.log.segments.iterdir())) >= 2
    assert cli(built.root, "checkpoints", "create").returncode == 0
    closed = sorted(built.log.segments.iterdir())[0]
    assert cli(built.root, "verify").returncode == 0
    data = closed.read_bytes()
    closed.write_bytes(data.replace(b"zzz", b"zzZ", 1))
    result = cli(built.root, "verify")
    assert result.returncode == 1 and closed.name in result.stdout


def test_restore_out_reproduces_exactly_records_up_to_the_checkpoint(session, workdir):
    daemon = session
    m = manifests(daemon.log_dir)[1]
    out = workdir / "restored"
    result = cli(daemon.log_dir, "restore", m["id"], "--out", str(out))
    assert result.returncode == 0, result.stderr
    original = [e.line for e in daemon.records() if e.seq <= m["last_seq"]]
    assert [e.line for e in reader.records(LogDir(out))] == original
    assert cli(out, "verify").returncode == 0, "a complete, self-contained log dir"
    assert cli(daemon.log_dir, "restore", m["id"], "--out", str(out)).returncode == 2, "target exists"


def test_restore_in_place_refuses_while_recording_then_archives_the_rest(signalled):
    daemon, _ = signalled
    m = manifests(daemon.log_dir)[0]
    result = cli(daemon.log_dir, "restore", m["id"])
    assert result.returncode == 1 and "--stop-daemon" in result.stderr
    before = daemon.log.active.read_bytes()

    result = cli(daemon.log_dir, "restore", m["id"], "--stop-daemon")
    assert result.returncode == 0, result.stderr
    assert daemon.proc.wait(5) == 0
    restarted = daemon.status()["pid"]  # the restore started the daemon again, as it was started
    recs = [e for e in daemon.records() if e.seq <= m["last_seq"] + 1]
    assert [e.seq for e in recs] == list(range(1, m["last_seq"] + 2))
    lineage = recs[-1].rec["payload"]
    assert recs[-1].rec["topic"] == "$persist/restore" and lineage["checkpoint"] == m["id"]
    archive = daemon.log_dir / lineage["archived_to"]
    (tail,) = [p for p in archive.iterdir() if ".after-" in p.name]
    kept = daemon.log.active.read_bytes()[: m["segments"][-1]["bytes"]]
    assert (kept + tail.read_bytes()).startswith(before), \
        "nothing deleted: the log up to the checkpoint plus the archived tail is the old log (and what shutdown added)"
    assert json.loads((archive / "RESTORE.json").read_text())["restore_record_seq"] == m["last_seq"] + 1
    assert cli(daemon.log_dir, "verify").returncode == 0

    try:  # recording resumes after the restore record
        assert eventually(lambda: daemon.try_status().get("last_seq", 0) >= m["last_seq"] + 2)
    finally:
        os.kill(restarted, signal.SIGTERM)
        eventually(lambda: process_gone(restarted))


def test_restore_print_formats(session):
    daemon = session
    m = manifests(daemon.log_dir)[0]
    prompt = cli(daemon.log_dir, "restore", m["id"], "--print", "--format", "prompt").stdout
    assert "a0: burst 0 msg 9" in prompt and "burst 1" not in prompt
    md = cli(daemon.log_dir, "restore", m["id"], "--print", "--format", "markdown").stdout
    assert md.startswith("# Conversation") and "### a0" in md
    lines = cli(daemon.log_dir, "restore", m["id"], "--print", "--format", "json").stdout.splitlines()
    chat = [x for x in lines if orjson.loads(x)["topic"] == "agent.chat"]
    assert len(chat) == 10 and not any(orjson.loads(x)["topic"].startswith("$persist/") for x in lines)


def test_checkpoint_without_a_daemon_and_prune_keeps_labels(session_copy):
    log = session_copy
    assert cli(log.root, "checkpoints", "create", "--label", "keepme").returncode == 0
    assert cli(log.root, "checkpoints", "create").returncode == 0
    result = cli(log.root, "checkpoints", "prune", "--keep", "1")
    assert result.returncode == 0
    left = manifests(log.root)
    assert [m.get("label") for m in left] == ["keepme", None]
    assert cli(log.root, "verify").returncode == 0, "pruning keeps the chain verifiable"


def test_list_show_diff_and_json(session):
    daemon = session
    items = manifests(daemon.log_dir)
    listed = [json.loads(x) for x in cli(daemon.log_dir, "checkpoints", "list", "--json").stdout.splitlines()]
    assert [m["id"] for m in listed] == [m["id"] for m in items]
    shown = cli(daemon.log_dir, "checkpoints", "show", items[0]["id"])
    assert shown.returncode == 0 and items[0]["chain"] in shown.stdout
    diff = [json.loads(x) for x in cli(daemon.log_dir, "checkpoints", "diff", items[0]["id"], items[2]["id"],
                                       "--json").stdout.splitlines()]
    assert sum(r["topic"] == "agent.chat" for r in diff) == 20
    assert sorted(r["meta"].get("sender") for r in diff if r["topic"] == "agent.chat") == ["a1"] * 10 + ["a2"] * 10


def test_unknown_checkpoint_suggests_the_closest(session):
    daemon = session
    real = manifests(daemon.log_dir)[0]["id"]
    result = cli(daemon.log_dir, "checkpoints", "show", real[:-1] + "9x")
    assert result.returncode == 2 and f"did you mean {real}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def bytes_read_by_this_process() -> int:
    """``rchar`` of /proc/self/io: every byte this process has read through read(2)/pread(2)."""
    io = Path("/proc/self/io").read_text()
    return int(io.split("rchar:")[1].split()[0])


def test_hasher_is_incremental_and_exact(tmp_path):
    """Each digest reads only what was appended since the last one, measured by the kernel's
    count of bytes read; and bytes already hashed are never read again (an edit there goes
    unseen by the running hash, where a re-hash would see it)."""
    path = tmp_path / "seg"
    hasher = cps.Hasher()
    data = b"".join(b'{"seq":%d,"pad":"%s"}\n' % (i, b"x" * 100) for i in range(80_000))  # ~9 MiB
    path.write_bytes(data)
    before = bytes_read_by_this_process()
    assert hasher.digest("seg", path, len(data)) == (hashlib.sha256(data).hexdigest(), data.count(b"\n"))
    assert bytes_read_by_this_process() - before >= len(data), "the first digest reads the whole prefix"
    for i in range(5):
        appended = b'{"seq":"more %d"}\n' % i * 1000
        with open(path, "r+b") as f:  # an edit of bytes already hashed...
            f.write(b"#" * 64)
            f.seek(0, 2)
            f.write(appended)  # ...and new bytes after them
        data += appended
        before = bytes_read_by_this_process()
        got = hasher.digest("seg", path, len(data))
        read = bytes_read_by_this_process() - before
        assert read < len(appended) + (64 << 10), f"read {read} bytes for {len(appended)} appended: a re-hash"
        assert got == (hashlib.sha256(data).hexdigest(), data.count(b"\n")), \
            "the running hash covers exactly the bytes it saw, once each"
        assert got[0] != hashlib.sha256(path.read_bytes()).hexdigest(), "the edited prefix was never re-read"


def test_a_running_daemon_checkpoint_hashes_only_what_was_appended(signalled):
    """An in-place edit of bytes an earlier checkpoint already hashed does not show in the next
    checkpoint's hash (nothing re-read), while everything appended since is in it."""
    daemon, p = signalled
    daemon.proc.send_signal(signal.SIGUSR1)  # a checkpoint; its bytes are hashed from here on
    wait_for(lambda: manifests(daemon.log_dir)[-1]["reason"] == "signal", what="SIGUSR1 checkpoint")
    (hashed,) = manifests(daemon.log_dir)[-1]["segments"]
    original = daemon.log.active.read_bytes()[: hashed["bytes"]]
    i = original.index(b"burst 0 msg 3")
    with open(daemon.log.active, "r+b") as f:  # same length, in place: the daemon's appends go on after it
        f.seek(i)
        f.write(b"BURST")
    for k in range(10):
        p.send(b"agent.chat", b'{"sender":"late","text":"after the edit %d"}' % k)
    daemon.wait_records(40)
    n = len(manifests(daemon.log_dir))
    daemon.proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: len(manifests(daemon.log_dir)) > n and manifests(daemon.log_dir)[-1]["reason"] == "signal",
             what="a second SIGUSR1 checkpoint")
    (seg,) = manifests(daemon.log_dir)[-1]["segments"]
    now = daemon.log.active.read_bytes()
    assert seg["bytes"] > hashed["bytes"] and b"after the edit 9" in now[hashed["bytes"]: seg["bytes"]]
    incremental = hashlib.sha256(original + now[hashed["bytes"]: seg["bytes"]]).hexdigest()
    rehashed = hashlib.sha256(now[: seg["bytes"]]).hexdigest()
    assert seg["sha256"] != rehashed, "the checkpoint re-read bytes an earlier checkpoint had hashed"
    assert seg["sha256"] == incremental, "the checkpoint hashes the bytes it saw, each once"
    result = cli(daemon.log_dir, "verify")
    assert result.returncode == 1, "verify, which does re-read, catches the edit"
