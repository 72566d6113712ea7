"""The log dir belongs to the daemon's user: foreign owners, planted symlinks, a deleted lock file, modes."""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
import time

import pytest

from libdir import run_cli
from persist.agent.launcher import ensure_daemon
from persist.daemon.log import lock
from persist.daemon.log.layout import LogDir
from procs import run, wait_for

NO_BROKER = "tcp://127.0.0.1:9"  # the daemon refuses the log dir before it connects anywhere


@pytest.fixture
def stranger():
    """The uid of a throwaway user, deleted afterwards."""
    name = f"pt{secrets.token_hex(6)}"
    for _ in range(50):  # useradd fails while another one holds /etc/passwd's lock
        if subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                          capture_output=True).returncode == 0:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"useradd {name} kept failing")
    try:
        yield int(subprocess.run(["id", "-u", name], capture_output=True, text=True, check=True).stdout)
    finally:
        for _ in range(50):
            if subprocess.run(["userdel", name], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)


def refused(log_dir, *names: str) -> str:
    """Run the daemon on ``log_dir``; it must exit 1 with one line naming one of ``names``."""
    result = run("persist-daemon", "--log-dir", str(log_dir), "--connect", NO_BROKER, "--log-format", "json")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and any(name in lines[0] for name in names), result.stderr
    return lines[0]


@pytest.mark.parametrize("where", [".", "segments", "checkpoints"])
def test_a_log_dir_owned_by_another_user_is_refused(workdir, stranger, where):
    log = LogDir(workdir / "logs")
    log.create()
    os.chown(log.root / where, stranger, stranger)
    line = refused(log.root, str((log.root / where).resolve()) if where == "." else str(log.root / where))
    assert f"uid {stranger}" in line and "chown" in line
    assert not log.active.exists(), "nothing was written"


@pytest.mark.parametrize("name", ["daemon.lock", "current_session.jsonl", "daemon.pid", "segments"])
def test_a_planted_symlink_is_refused_and_its_target_untouched(workdir, name):
    log = LogDir(workdir / "logs")
    log.create()
    target = workdir / "precious"
    target.write_text("do not touch\n")
    planted = log.root / name
    if planted.is_dir():
        planted.rmdir()
    planted.symlink_to(target)
    assert "symbolic link" in refused(log.root, str(planted))
    assert target.read_text() == "do not touch\n"


def test_exactly_one_daemon_even_when_its_lock_file_is_deleted(start_daemon, publish, log_dir):
    first = start_daemon()
    pub = publish()
    pub.join(first)
    log = LogDir(log_dir)
    log.lock_file.unlink()
    assert lock.is_locked(log) and lock.holder_pid(log) == first.proc.pid, "the pid is still known from daemon.pid"
    second = run("persist-daemon", "--log-dir", str(log_dir), "--connect", NO_BROKER, "--log-format", "json")
    assert second.returncode == 1 and f"pid {first.proc.pid}" in second.stderr, second.stderr
    for i in range(200):
        pub.send(b"agent.after", b'{"i":%d}' % i)
    first.wait_records(200)
    assert first.ping()
    assert first.stop() == 0
    seqs = [e.seq for e in first.records()]
    assert seqs == list(range(1, len(seqs) + 1)), "one writer: seq never breaks"


def private_modes(root) -> list[str]:
    """Everything under ``root`` that is not 0600 (files, sockets) or 0700 (directories)."""
    loose = []
    for parent, dirs, files in os.walk(root):
        for name in dirs + files:
            mode = os.lstat(os.path.join(parent, name)).st_mode
            if stat.S_IMODE(mode) != (0o700 if stat.S_ISDIR(mode) else 0o600):
                loose.append(f"{os.path.join(parent, name)} {stat.S_IMODE(mode):o}")
    return loose


def test_every_file_a_launched_daemon_creates_is_private(broker, workdir):
    log = LogDir(workdir / "logs")
    conf = workdir / "persist.toml"
    conf.write_text("[launcher]\ngrace_s = 0.5\n")
    old = os.umask(0o022)
    try:
        with ensure_daemon(log.root, connect=broker.backend, config=str(conf), agent="modes") as handle:
            index_dir = log.root / "metadata_index"
            wait_for(lambda: (index_dir / "indexer.log").exists() and any(index_dir.glob("*-wal")),
                     timeout=20, what="the indexer's log and index files")
            assert (log.root / "daemon.log").exists()
            assert private_modes(log.root) == []
        wait_for(lambda: not lock.is_locked(log), timeout=20, what="the launched daemon to stop")
        assert handle.started
    finally:
        os.umask(old)
    assert private_modes(log.root) == []



def test_cli_commands_that_write_refuse_a_planted_symlink(workdir):
    log = LogDir(workdir / "logs")
    log.create()
    log.active.write_text("")
    target = workdir / "precious"
    target.write_text("do not touch\n")
    log.lock_file.symlink_to(target)
    result = run_cli("recover", "--log-dir", str(log.root))
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert str(log.lock_file) in result.stderr and "symbolic link" in result.stderr
    assert target.read_text() == "do not touch\n"


@pytest.mark.parametrize("command", [["export"], ["recent"], ["verify"], ["index", "rebuild"]])
def test_readers_never_follow_a_planted_segment_link(workdir, command):
    log = LogDir(workdir / "logs")
    log.create()
    log.active.write_text('{"v":1,"seq":2,"topic":"t","meta":{},"payload":{}}\n')
    outside = workdir / "outside.jsonl"
    outside.write_text('{"v":1,"seq":1,"topic":"t","meta":{"bytes":2},"payload":{"secret":"of another user"}}\n')
    (log.segments / "seg-0000000000000001.jsonl").symlink_to(outside)
    result = run_cli(*command, "--log-dir", str(log.root))
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "symbolic link" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "another user" not in result.stdout
