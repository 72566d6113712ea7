"""The launcher, presence, persist-launch, the publisher helper and systemd notify — all real processes."""

from __future__ import annotations

import os
import pty
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from libdir import run_cli
from persist.agent.launcher import DaemonStartError, ensure_daemon
from persist.daemon.log import lock, reader
from persist.daemon.log.layout import LogDir
from procs import BIN, Daemon, heavy, process_gone, read_until, run, wait_for

AGENT = textwrap.dedent("""
    import sys
    from persist.agent.launcher import ensure_daemon
    handle = ensure_daemon(sys.argv[1], connect=sys.argv[2], config=sys.argv[3], agent=sys.argv[4])
    print(handle.pid, handle.started, flush=True)
    sys.stdin.readline()
    handle.release()
""")


@pytest.fixture
def quick_config(workdir):
    cfg = workdir / "persist.toml"
    cfg.write_text("[launcher]\ngrace_s = 1.0\n")
    return str(cfg)


def agent_proc(log_dir, broker, cfg, name):
    return subprocess.Popen([sys.executable, "-c", AGENT, str(log_dir), broker.backend, cfg, name],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _records(log_dir):
    return list(reader.records(LogDir(log_dir)))


def agent_records(log_dir):
    return [e.rec["payload"] for e in _records(log_dir) if e.rec["topic"] == "$persist/agent"]


def daemon_processes(log_dir) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"persist.daemon --log-dir {log_dir} "], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_ten_agents_at_once_get_exactly_one_daemon_which_stops_after_the_last(broker, log_dir, quick_config):
    agents = [agent_proc(log_dir, broker, quick_config, f"agent{i}") for i in range(10)]
    answers = [a.stdout.readline().split() for a in agents]
    pids = {int(pid) for pid, _ in answers}
    assert len(pids) == 1, f"one daemon for all: {answers}"
    assert sum(started == "True" for _, started in answers) == 1
    assert daemon_processes(log_dir) == list(pids)
    pid = pids.pop()
    log = LogDir(log_dir)
    wait_for(lambda: len(Daemon(log_dir).try_status().get("agents", [])) == 10, what="10 agents registered")
    for a in agents:
        a.stdin.write("\n")
        a.stdin.flush()
        assert a.wait(10) == 0
    wait_for(lambda: not lock.is_locked(log), timeout=15, what="the launched daemon to stop after the last agent")
    wait_for(lambda: process_gone(pid), what=f"daemon pid {pid} to exit")
    events = [(r["event"], r["agent"]) for r in agent_records(log_dir)]
    assert sorted(a for e, a in events if e == "joined") == sorted(f"agent{i}" for i in range(10))
    assert sorted(a for e, a in events if e == "left") == sorted(f"agent{i}" for i in range(10))
    assert _records(log_dir)[-1].rec["topic"] == "$persist/stop"


def test_an_agent_killed_without_releasing_is_noticed(broker, log_dir, quick_config):
    survivor = agent_proc(log_dir, broker, quick_config, "survivor")
    survivor.stdout.readline()
    victim = agent_proc(log_dir, broker, quick_config, "victim")
    victim.stdout.readline()
    victim.kill()
    victim.wait()
    wait_for(lambda: any(r["event"] == "left" and r["agent"] == "victim" for r in agent_records(log_dir)),
             what="the dead agent noticed")
    left = next(r for r in agent_records(log_dir) if r["event"] == "left")
    assert left["reason"] == "died"
    assert lock.is_locked(LogDir(log_dir)), "the survivor keeps the daemon running"
    survivor.stdin.write("\n")
    survivor.stdin.flush()
    survivor.wait(10)
    wait_for(lambda: not lock.is_locked(LogDir(log_dir)), timeout=15, what="daemon stop")


def test_a_daemon_started_any_other_way_is_used_and_never_stopped(start_daemon, broker, log_dir, quick_config):
    daemon = start_daemon("--config", quick_config)
    with ensure_daemon(log_dir, connect=broker.backend, config=quick_config, agent="guest") as handle:
        assert handle.started is False and handle.pid == daemon.proc.pid
        wait_for(lambda: daemon.try_status().get("agents") == ["guest"], what="guest registered")
    time.sleep(2.5)  # longer than the grace period
    assert daemon.ping() and daemon.status()["agents"] == []
    assert daemon.stop() == 0


def test_stale_lock_and_pid_files_from_a_dead_daemon_do_not_block(broker, log_dir, quick_config):
    log = LogDir(log_dir)
    log.create()
    log.lock_file.write_text("999999\n")
    log.pid_file.write_text("999999\n")
    (log_dir / "daemon.sock").write_text("")
    with ensure_daemon(log_dir, connect=broker.backend, config=quick_config, agent="a") as handle:
        assert handle.started and lock.holder_pid(log) == handle.pid
    wait_for(lambda: not lock.is_locked(log), timeout=15, what="daemon stop")


def test_a_daemon_that_crashes_at_start_is_reported_with_its_log(log_dir, workdir):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    cfg = workdir / "bad.toml"
    cfg.write_text(f'[daemon]\nbind = ["tcp://127.0.0.1:{blocker.getsockname()[1]}"]\n')
    try:
        with pytest.raises(DaemonStartError, match="Address already in use"):
            ensure_daemon(log_dir, config=str(cfg), agent="a")
    finally:
        blocker.close()
    assert not list((log_dir / "agents").iterdir()), "the failed agent is unregistered"
    assert daemon_processes(log_dir) == [], "no orphan daemon"


def test_bad_config_is_a_clear_error(log_dir, workdir):
    cfg = workdir / "bad.toml"
    cfg.write_text("[daemon]\nfsync = 'never'\n")
    with pytest.raises(DaemonStartError, match="daemon.fsync"):
        ensure_daemon(log_dir, config=str(cfg))


def test_persist_launch_passes_exit_code_and_signals(broker, log_dir, quick_config):
    args = ["--log-dir", str(log_dir), "--connect", broker.backend, "--config", quick_config, "--name", "child"]
    result = run("persist-launch", *args, "--", sys.executable, "-c",
                 "import os, sys; print(os.environ['PERSIST_LOG_DIR']); sys.exit(3)")
    assert result.returncode == 3 and result.stdout.strip() == str(log_dir)

    trap = ("import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: sys.exit(42))\n"
            "print('ready', flush=True)\n"
            "time.sleep(30)\n")
    proc = subprocess.Popen([BIN / "persist-launch", *args, "--", sys.executable, "-c", trap],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 42, "the agent got the signal and its exit code came back"
    wait_for(lambda: ("left", "child") in [(r["event"], r["agent"]) for r in agent_records(log_dir)],
             what="the agent's release recorded")
    wait_for(lambda: not lock.is_locked(LogDir(log_dir)), timeout=15, what="daemon stop")


def test_persist_launch_with_a_command_that_does_not_exist(log_dir):
    result = run("persist-launch", "--log-dir", str(log_dir), "--", "no-such-agent-command")
    assert result.returncode == 127 and "no-such-agent-command: command not found" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert daemon_processes(log_dir) == []


def test_publisher_first_messages_are_not_lost(start_daemon, broker):
    from persist.agent.publisher import Publisher

    daemon = start_daemon()
    with Publisher("fresh-agent", broker.frontend) as pub:
        for i in range(1000):
            pub.send("agent.chat", {"text": f"message {i}"})
    recs = daemon.wait_records(1000)
    assert [r.rec["payload"]["sender_seq"] for r in recs] == list(range(1, 1001))
    assert all(r.rec["meta"]["sender"] == "fresh-agent" for r in recs)
    assert not any(e.rec["topic"] == "$persist/gap" for e in daemon.records())


@heavy
def test_sd_notify_ready_watchdog_stopping(workdir, broker):
    path = str(workdir / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    daemon = Daemon(workdir / "logs", "--connect", broker.backend,
                    env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}).start(wait=False)
    try:
        first = sock.recv(4096).decode()
        assert "READY=1" in first and f"MAINPID={daemon.proc.pid}" in first
        stamps = []
        while len(stamps) < 5:
            msg = sock.recv(4096).decode()
            if "WATCHDOG=1" in msg:
                stamps.append(time.monotonic())
                assert "STATUS=recording" in msg
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        assert all(0.1 < g < 0.4 for g in gaps), f"half of WATCHDOG_USEC (0.2 s): {gaps}"
        daemon.proc.send_signal(signal.SIGTERM)
        while "STOPPING=1" not in sock.recv(4096).decode():
            pass
        assert daemon.proc.wait(10) == 0
    finally:
        sock.close()
        if daemon.proc.poll() is None:
            daemon.kill9()


UNITS = ["persist-daemon.service", "persist-daemon.user.service"]


@pytest.mark.parametrize("unit", UNITS)
def test_unit_files(unit, workdir):
    repo = BIN.parent.parent
    text = (repo / "systemd" / unit).read_text()
    sections = {line.strip("[]") for line in text.splitlines() if line.startswith("[")}
    assert sections == {"Unit", "Service", "Install"}
    keys = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    assert keys["Type"] == "notify" and keys["Restart"] == "on-failure" and "WatchdogSec" in keys
    assert keys["NoNewPrivileges"] == "yes" and keys["PrivateTmp"] == "yes" and keys["StateDirectory"] == "persist"
    if unit == "persist-daemon.service":
        assert keys["DynamicUser"] == "yes" and keys["ProtectSystem"] == "strict" and keys["ProtectHome"] == "yes"
        assert "/etc/persist/config.toml" in keys["ExecStart"]
    if shutil.which("systemd-analyze"):
        exe = keys["ExecStart"].split()[0]
        local = workdir / unit.replace(".user", "")
        local.write_text(text.replace(exe, str(BIN / "persist-daemon")))
        result = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True, text=True)
        assert result.returncode == 0 and str(local) not in result.stderr, result.stderr


@heavy
def test_install_systemd_user_is_idempotent_and_uninstalls_keeping_data(workdir):
    home = workdir / "home"
    home.mkdir()
    script = BIN.parent.parent / "scripts" / "install-systemd.sh"
    env = {**os.environ, "HOME": str(home)}
    for _ in range(2):
        result = subprocess.run(["bash", str(script), "--user"], env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
    unit = home / ".config/systemd/user/persist-daemon.service"
    config = home / ".config/persist/config.toml"
    assert unit.read_text() == (BIN.parent.parent / "systemd/persist-daemon.user.service").read_text()
    check = subprocess.run([home / ".local/share/persist/venv/bin/persist-daemon", "--check-config"],
                           env=env, capture_output=True, text=True)
    assert check.returncode == 0 and str(config) in check.stdout
    result = subprocess.run(["bash", str(script), "--user", "--uninstall"], env=env, capture_output=True, text=True)
    assert result.returncode == 0 and not unit.exists() and config.exists()


def test_persist_launch_menu_hands_the_chosen_checkpoint_to_the_agent(recorder, log_dir):
    daemon, p = recorder()
    p.send(b"agent.chat", b'{"sender":"claude","text":"remember the blue door"}')
    daemon.wait_records(1)
    assert run_cli("checkpoints", "create", "--label", "door", "--log-dir", str(log_dir)).returncode == 0
    agent = "import os; print('CONTEXT:', open(os.environ['PERSIST_RESTORED_CONTEXT']).read())"
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(str(BIN / "persist-launch"), ["persist-launch", "--menu", "--log-dir", str(log_dir), "--name", "m",
                                                "--", sys.executable, "-c", agent])
    try:
        read_until(fd, "Start from which checkpoint")
        os.write(fd, b"1")
        assert "claude: remember the blue door" in read_until(fd, "blue door", timeout=15).split("CONTEXT:")[-1]
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        os.close(fd)
    assert daemon.ping(), "a daemon it did not start is left running"
