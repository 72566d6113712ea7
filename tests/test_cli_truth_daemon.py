"""What persist-cli shows about a running daemon must be true (issue 12), against real daemons:
status and doctor say whether it reaches its broker, at the endpoints it really uses; a restore that
stopped a daemon starts it again; the daemon refuses a checkpoint label that is taken."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import sys

from libdir import Built, cli
from persist.daemon.config import DaemonSection
from persist.daemon.control import ask
from procs import BIN, eventually, process_gone, read_until, run


def test_status_says_when_the_daemon_does_not_reach_its_broker(lone_daemon):
    daemon = lone_daemon()  # connects to a port where no broker listens
    human = cli(daemon.log_dir, "status")
    assert human.returncode == 0 and "● recording" not in human.stdout, human.stdout
    assert "NOT reaching the broker" in human.stdout and "tcp://127.0.0.1:9" in human.stdout
    data = json.loads(cli(daemon.log_dir, "status", "--json").stdout)
    assert [e["state"] for e in data["bus"]] in (["connecting"], ["disconnected"])
    doctor = cli(daemon.log_dir, "doctor", "--json")
    broker = [c for c in map(json.loads, doctor.stdout.splitlines()) if c["check"] == "broker"]
    assert len(broker) == 1 and not broker[0]["ok"] and "tcp://127.0.0.1:9" in broker[0]["detail"]
    daemon.stop()
    stopped = cli(daemon.log_dir, "status", "--json")
    assert stopped.returncode == 3 and json.loads(stopped.stdout)["running"] is False
    assert cli(daemon.log_dir, "status").returncode == 3
    missing = cli(daemon.log_dir / "nowhere", "status", "--json")
    assert missing.returncode == 3 and json.loads(missing.stdout) == {
        "running": False, "log_dir": str(daemon.log_dir / "nowhere"), "exists": False,
        "error": json.loads(missing.stdout)["error"]}


def test_status_and_doctor_use_the_running_daemons_endpoint(start_daemon, broker):
    daemon = start_daemon()  # --connect the test broker, on a free port: not the config's default
    connected = eventually(lambda: [e for e in daemon.status()["bus"] if e["state"] == "connected"])
    assert connected, daemon.status()["bus"]
    human = cli(daemon.log_dir, "status")
    assert "● recording" in human.stdout and f"{broker.backend}  connected since" in human.stdout
    doctor = cli(daemon.log_dir, "doctor")
    assert doctor.returncode == 0, doctor.stdout
    assert f"✓ broker       {broker.backend} connected" in doctor.stdout
    default = DaemonSection().connect[0]
    assert default != broker.backend and default not in doctor.stdout, "the config's default is not the daemon's"


def test_restore_stop_daemon_says_so_and_starts_it_again(lone_daemon):
    daemon = lone_daemon()
    assert cli(daemon.log_dir, "checkpoints", "create", "--label", "here").returncode == 0
    assert cli(daemon.log_dir, "checkpoints", "create", "--label", "later").returncode == 0
    old = daemon.daemon_pid()
    result = run("persist-cli", "restore", "here", "--stop-daemon", "--log-dir", str(daemon.log_dir))
    new = None
    try:
        assert result.returncode == 0, result.stderr
        assert f"recording stopped: the daemon (pid {old}) was stopped" in result.stdout
        assert "recording again" in result.stdout, result.stdout
        assert daemon.proc.wait(10) == 0
        new = ask(daemon.log.control_endpoint, "status")["pid"]
        assert new != old and str(new) in result.stdout
        argv = open(f"/proc/{new}/cmdline", "rb").read().split(b"\0")[:-1]
        assert [a.decode() for a in argv[-len(daemon.args):]] == [str(a) for a in daemon.args], \
            "started again with the same command line"
    finally:
        if new:
            os.kill(new, signal.SIGTERM)
            eventually(lambda: process_gone(new))


def test_the_daemon_refuses_a_taken_checkpoint_label(lone_daemon):
    daemon = lone_daemon()
    first = ask(daemon.log.control_endpoint, "checkpoint offline", timeout_ms=30000)
    assert first["ok"], first
    again = ask(daemon.log.control_endpoint, "checkpoint offline", timeout_ms=30000)
    assert not again["ok"] and "already names" in again["error"]
    refused = cli(daemon.log_dir, "checkpoints", "create", "--label", "offline")
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert cli(daemon.log_dir, "checkpoints", "show", "offline").returncode == 0
    announced = [e.rec["payload"]["label"] for e in daemon.records() if e.rec["topic"] == "$persist/checkpoint"]
    assert announced.count("offline") == 1, "a refused label leaves no announcement without a manifest"


def menu(log_dir, env: dict | None = None) -> tuple[int, int]:
    """``persist-cli menu`` on a pseudo-terminal: (pid, fd)."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(str(BIN / "persist-cli"), ["persist-cli", "menu", "--log-dir", str(log_dir)],
                  {**os.environ, **(env or {})})
    return pid, fd


def leave(pid: int, fd: int) -> int:
    os.write(fd, b"\x03")
    _, code = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(code)


def test_menu_comes_back_from_the_pager_on_the_same_item_without_colour(workdir):
    built = Built(workdir / "logs")
    built.send(b"agent.chat", b'{"sender":"ann","text":"the pager shows this"}')
    built.checkpoint("manual", "paged")
    built.close()
    pid, fd = menu(built.root, {"NO_COLOR": "1", "PAGER": "cat"})
    try:
        read_until(fd, "Quit")
        os.write(fd, b"2")  # print a checkpoint's conversation
        read_until(fd, "paged")
        os.write(fd, b"\r")  # the checkpoint
        read_until(fd, "Format")
        os.write(fd, b"\r")  # markdown, through the pager
        screen = read_until(fd, "Quit")  # back in the menu with no key pressed after the pager
        assert "the pager shows this" in screen and "press any key" not in screen
        menu_again = screen.rsplit("the pager shows this", 1)[-1]
        assert re.search(r"› (\x1b\[[0-9;]*m)* 2\. Print", menu_again), "the menu comes back on the item chosen"
        assert not re.search(r"\x1b\[[0-9;]*(3[0-7]|9[0-7])m", screen), "NO_COLOR: no colour"
    finally:
        assert leave(pid, fd) == 0


def test_restore_from_the_menu_says_recording_stopped_and_starts_it_again(lone_daemon):
    daemon = lone_daemon()
    assert cli(daemon.log_dir, "checkpoints", "create", "--label", "menu-restore").returncode == 0
    old = daemon.daemon_pid()
    pid, fd = menu(daemon.log_dir)
    new = None
    try:
        read_until(fd, "Quit")
        os.write(fd, b"1")
        read_until(fd, "menu-restore")
        os.write(fd, b"\r")
        assert f"pid {old}) is stopped for it and started again" in read_until(fd, "[y/N]")
        os.write(fd, b"y\r")
        screen = read_until(fd, "press any key", timeout=30)
        assert f"recording stopped: the daemon (pid {old})" in screen and "recording again" in screen, screen
        new = ask(daemon.log.control_endpoint, "status")["pid"]
        assert new != old
        os.write(fd, b" ")
        read_until(fd, "Quit")
    finally:
        assert leave(pid, fd) == 0
        if new:
            os.kill(new, signal.SIGTERM)
            eventually(lambda: process_gone(new))


def test_persist_launch_menu_hands_the_agent_only_the_newest_turns_that_fit(lone_daemon, log_dir):
    built = Built(log_dir)
    for i in range(3):
        built.send(b"agent.chat", b'{"sender":"ann","text":"turn number %d"}' % i, meta={"tokens": 10})
    built.close()
    lone_daemon()  # records on in the same log
    assert cli(log_dir, "checkpoints", "create", "--label", "budget").returncode == 0
    agent = "import os; print('CONTEXT:', open(os.environ['PERSIST_RESTORED_CONTEXT']).read())"
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(str(BIN / "persist-launch"), ["persist-launch", "--menu", "--max-tokens", "15", "--log-dir",
                                                str(log_dir), "--name", "m", "--", sys.executable, "-c", agent])
    try:
        read_until(fd, "Start from which checkpoint")
        os.write(fd, b"\r")
        seen = read_until(fd, "turn number 2", timeout=15)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        os.close(fd)
    assert "2 earlier turn(s) left out to fit 15 tokens" in seen
    context = seen.split("CONTEXT:")[-1]
    assert "turn number 2" in context and "turn number 1" not in context and "turn number 0" not in context


def test_search_right_after_the_daemon_starts_finds_what_was_recorded(lone_daemon, log_dir):
    built = Built(log_dir)
    for i in range(3000):
        built.send(b"agent.chat", b'{"sender":"ann","text":"early words %d"}' % i)
    built.send(b"agent.chat", b'{"sender":"ann","text":"the quokka at the end"}')
    built.close()
    lone_daemon()  # its indexer starts now, with no index file yet
    result = cli(log_dir, "search", "quokka", "--json")
    if result.returncode == 0:  # complete ...
        assert json.loads(result.stdout)["seq"] == 3001
    else:  # ... or it says how far behind the (idle-priority) indexer still is on a busy machine
        assert "has not reached the newest" in result.stderr or "is making the search index" in result.stderr, \
            result.stderr


def test_a_refused_restore_starts_the_daemon_it_stopped_again_and_says_so(lone_daemon):
    daemon = lone_daemon()
    assert cli(daemon.log_dir, "checkpoints", "create", "--label", "tampered").returncode == 0
    with open(daemon.log.active, "r+b") as f:  # a byte the checkpoint covers changes: the restore refuses
        first = f.read(1)
        f.seek(0)
        f.write(b"[" if first != b"[" else b"{")
    result = run("persist-cli", "restore", "tampered", "--stop-daemon", "--log-dir", str(daemon.log_dir))
    assert daemon.proc.wait(10) == 0
    new = ask(daemon.log.control_endpoint, "status")["pid"]
    try:
        assert result.returncode == 2 and "run persist-cli verify" in result.stderr, result.stderr
        assert f"it records again as pid {new}" in result.stderr, result.stderr
    finally:
        os.kill(new, signal.SIGTERM)
        eventually(lambda: process_gone(new))


def test_a_restore_never_starts_a_systemd_daemon_by_hand_and_says_so_loudly(lone_daemon):
    daemon = lone_daemon(env={"INVOCATION_ID": "0123456789abcdef"})  # what systemd sets for its services
    assert cli(daemon.log_dir, "checkpoints", "create", "--label", "sd").returncode == 0
    result = run("persist-cli", "restore", "sd", "--stop-daemon", "--log-dir", str(daemon.log_dir))
    assert daemon.proc.wait(10) == 0
    assert result.returncode == 1 and "recording stopped" in result.stdout
    assert "RECORDING IS STOPPED" in result.stderr and "systemctl start" in result.stderr, result.stderr
    assert cli(daemon.log_dir, "status").returncode == 3, "nothing records, as it said"
