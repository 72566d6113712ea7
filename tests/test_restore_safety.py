"""In-place restore as one crash-safe step, unique archives, short writes, unreadable manifests."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import orjson
import pytest
from test_readers import make_line, written_log

from libdir import cli
from persist.daemon.log import checkpoints, reader, restore
from persist.daemon.log.layout import LogDir


def lines(n: range) -> list[bytes]:
    return [make_line(i, b"agent.chat", b'{"sender":"a","text":"message %d"}' % i) for i in n]


def restore_records(log: LogDir) -> list[dict]:
    return [e.rec for e in reader.records(log) if e.rec["topic"] == "$persist/restore"]


def archived_lines(archive) -> set[bytes]:
    """Every record line set aside in one archive folder."""
    return {line for path in archive.rglob("*") if path.is_file() and (path.suffix == ".jsonl" or ".after-" in path.name)
            for _, line in reader.lines_forward(path)}


@pytest.fixture
def forked(workdir):
    """A log of 10 records over two segments, checkpoint A at seq 6 (mid-segment), checkpoint B at 10, an index."""
    log = written_log(workdir / "logs", lines(range(1, 5)))
    os.rename(log.active, log.segments / "seg-0000000000000001.jsonl")
    log.active.write_bytes(b"".join(lines(range(5, 7))))
    assert cli(log.root, "checkpoints", "create", "--label", "A").returncode == 0
    with open(log.active, "ab") as f:
        f.write(b"".join(lines(range(7, 9))))
    os.rename(log.active, log.segments / "seg-0000000000000005.jsonl")
    log.active.write_bytes(b"".join(lines(range(9, 11))))
    assert cli(log.root, "checkpoints", "create", "--label", "B").returncode == 0
    assert cli(log.root, "index", "rebuild").returncode == 0
    return log


def test_two_restores_in_one_second_get_two_complete_archives(forked, monkeypatch):
    log = forked
    before = {e.seq: e.line for e in reader.records(log)}
    a = checkpoints.find(log, "A")
    one_second = time.gmtime()
    monkeypatch.setattr(time, "gmtime", lambda *_: one_second)  # on a slow disk one restore can take a second
    first = restore.restore_in_place(log, a)
    second = restore.restore_in_place(log, a)
    monkeypatch.undo()
    assert first["archived_to"] != second["archived_to"]
    one, two = log.root / first["archived_to"], log.root / second["archived_to"]
    assert archived_lines(one) == {before[s] for s in range(7, 11)}, "the first archive holds what came after A"
    assert [orjson.loads(x)["topic"] for x in archived_lines(two)] == ["$persist/restore"]
    for folder, result in ((one, first), (two, second)):
        assert orjson.loads((folder / "RESTORE.json").read_bytes()) == result
    assert [r["seq"] for r in restore_records(log)] == [7]
    assert [e.line for e in reader.records(log)][:6] == [before[s] for s in range(1, 7)]
    assert cli(log.root, "verify").returncode == 0


CRASHING_RESTORE = textwrap.dedent("""
    import os, signal, sys
    calls, kill_at = 0, int(sys.argv[1])

    def crashing(fn):
        def wrapper(*args, **kwargs):
            global calls
            calls += 1
            if calls == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kwargs)
        return wrapper

    for name in ("rename", "replace", "ftruncate", "write"):
        setattr(os, name, crashing(getattr(os, name)))
    from persist.cli.main import cli
    cli(sys.argv[2:])
""")


@pytest.mark.parametrize("kill_at", range(1, 17))
def test_a_restore_killed_at_any_step_is_finished_by_the_next_start(forked, kill_at, lone_daemon):
    log = forked
    before = {e.seq: e.line for e in reader.records(log)}
    proc = subprocess.run([sys.executable, "-c", CRASHING_RESTORE, str(kill_at), "restore", "A", "--log-dir", str(log.root)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode in (0, -9), proc.stderr
    if kill_at % 2:
        daemon = lone_daemon(log_dir=log.root)  # the daemon's start finishes it
        assert daemon.stop() == 0
    else:
        result = cli(log.root, "recover")
        assert result.returncode == 0, result.stderr
    assert not (log.root / restore.INTENT).exists()
    archives = list((log.root / "archive").glob("*/RESTORE.json"))
    if not archives:  # killed before its intent was written: nothing happened
        assert {e.seq: e.line for e in reader.records(log) if not e.rec["topic"].startswith("$persist/")} == before
        return
    (archive,) = [path.parent for path in archives]
    assert archived_lines(archive) == {before[s] for s in range(7, 11)}, "every record after A set aside, once"
    kept = list(reader.records(log))
    assert [e.line for e in kept[:6]] == [before[s] for s in range(1, 7)]
    (mark,) = restore_records(log)
    assert mark["seq"] == 7 and mark["payload"]["archived_to"] == str(archive.relative_to(log.root))
    assert orjson.loads((archive / "RESTORE.json").read_bytes())["restore_record_seq"] == 7
    assert (archive / "metadata_index").is_dir() and (archive / "checkpoints").is_dir()
    result = cli(log.root, "verify")
    assert result.returncode == 0, result.stdout


def test_restore_out_survives_short_writes(forked, workdir, monkeypatch):
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:7])))
    m = checkpoints.find(forked, "A")
    restore.restore_to(forked, m, workdir / "out")
    monkeypatch.undo()
    copied = [e.line for e in reader.records(LogDir(workdir / "out"))]
    assert copied == [e.line for e in reader.records(forked)][:6]
    a_file = workdir / "a-file"
    a_file.write_text("mine")
    result = cli(forked.root, "restore", "A", "--out", str(a_file))
    assert result.returncode == 2 and str(a_file) in result.stderr and "Traceback" not in result.stderr


def test_an_unreadable_manifest_does_not_stop_the_daemon_and_verify_names_it(forked, lone_daemon):
    (forked.checkpoints / "garbage.json").write_bytes(b"\x00\x01 not a manifest")
    daemon = lone_daemon(log_dir=forked.root)
    assert daemon.ping()
    assert "checkpoint_skipped" in daemon.errors()
    assert daemon.stop() == 0
    result = cli(forked.root, "verify")
    assert result.returncode == 1 and "garbage.json cannot be read" in result.stdout


@pytest.mark.parametrize("intent", ["restore.intent", "redact.intent"])
def test_a_garbled_intent_stops_the_daemon_in_one_line_not_a_traceback(forked, intent):
    (forked.root / intent).write_bytes(b"\x00 not json")
    result = subprocess.run([sys.executable, "-m", "persist.daemon", "--log-dir", str(forked.root),
                             "--connect", "tcp://127.0.0.1:9", "--log-format", "json"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert f"{intent} cannot be read" in result.stderr and "move it away" in result.stderr
    assert "Traceback" not in result.stderr and '"crashed"' not in result.stderr
