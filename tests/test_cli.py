"""persist-cli as a user drives it: click's runner over a log the format library wrote for the
commands that read files; a real daemon where a command talks to one (status, doctor, recover's
refusal, the menu's status); real processes and a pty for follow, the menu and signals."""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import select
import shutil
import signal
import subprocess
import time

import orjson
import pytest
from libdir import Built, run_cli
from procs import BIN, eventually, read_until, run, short_tmpdir

CHAT = [(who, topic, b'{"sender":"%s","text":"line %d from %s"}' % (who.encode(), i, who.encode()))
        for i, (who, topic) in enumerate([("claude", b"agent.chat"), ("gemini", b"agent.chat"), ("planner", b"plan")] * 4)]


def write_chat(root, close: bool = True) -> Built:
    built = Built(root)
    for _, topic, body in CHAT:
        built.send(topic, body)
    return built.close() if close else built


@pytest.fixture(scope="module")
def chat_log():
    """The short conversation, written by the format library once for every test that only reads it."""
    root = short_tmpdir()
    yield write_chat(root / "logs")
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def chat(recorder):
    """A running daemon with the short conversation recorded."""
    daemon, p = recorder()
    for _, topic, body in CHAT:
        p.send(topic, body)
    daemon.wait_records(12)
    return daemon, p


def invoke(*args, env=None):
    result = run_cli(*args, env=env)
    result.output, result.exit_code = result.stdout, result.returncode
    return result


def test_recent_reads_the_tail_with_filters(chat_log):
    daemon = chat_log
    result = invoke("recent", "-n", "3", "--topic", "agent.", "--log-dir", str(daemon.log_dir), "--json")
    recs = [orjson.loads(x) for x in result.output.splitlines()]
    assert [r["seq"] for r in recs] == sorted(r["seq"] for r in recs), "oldest first"
    assert all(r["topic"] == "agent.chat" for r in recs) and len(recs) == 3
    assert recs[-1]["payload"]["text"] == "line 10 from gemini"
    human = invoke("recent", "-n", "2", "--sender", "planner", "--log-dir", str(daemon.log_dir))
    assert human.exit_code == 0 and len(human.output.splitlines()) == 2 and "line 11 from planner" in human.output


def test_recent_follow_sees_a_record_written_after_it_started(workdir):
    built = write_chat(workdir / "logs", close=False)
    proc = subprocess.Popen([BIN / "persist-cli", "recent", "-n", "0", "--follow", "--json", "--topic", "late",
                             "--log-dir", str(built.root)], stdout=subprocess.PIPE)
    time.sleep(1.0)
    built.send(b"late.news", b'{"text":"written after follow started"}')
    built.close()
    ready, _, _ = select.select([proc.stdout], [], [], 10)
    assert ready, "follow printed nothing"
    rec = orjson.loads(proc.stdout.readline())
    assert rec["payload"]["text"] == "written after follow started"
    proc.send_signal(2)
    assert proc.wait(5) in (0, 130)


def test_export_formats_and_time_filters(chat_log, workdir):
    daemon = chat_log
    out = workdir / "all.jsonl"
    assert invoke("export", "--log-dir", str(daemon.log_dir), "-o", str(out)).exit_code == 0
    assert out.read_bytes().splitlines() == [e.line.rstrip(b"\n") for e in daemon.records()], "JSONL = on-disk lines"
    rows = list(csv.DictReader(io.StringIO(invoke("export", "--format", "csv", "--sender", "planner",
                                                  "--log-dir", str(daemon.log_dir)).output)))
    assert len(rows) == 4 and rows[0]["text"] == "line 2 from planner"
    md = invoke("export", "--format", "markdown", "--since", "10m", "--log-dir", str(daemon.log_dir)).output
    assert md.startswith("# Conversation") and "line 11 from planner" in md
    future = invoke("export", "--since", "2999-01-01T00:00:00Z", "--log-dir", str(daemon.log_dir)).output
    assert future == ""
    again = invoke("export", "--log-dir", str(daemon.log_dir), "-o", str(out))
    assert again.exit_code == 2, "never overwrites a file"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["export", "--since", "last tuesday-ish"], ["--since", "ISO 8601"]),
        (["checkpoints", "show", "nope"], ["no checkpoint 'nope'"]),
        (["restore", "nope"], ["no checkpoint 'nope'"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(chat_log, args, words):
    result = run_cli(*args, "--log-dir", str(chat_log.root))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    for w in words:
        assert w in result.stderr


def test_not_a_log_dir(workdir):
    result = run_cli("recent", "--log-dir", str(workdir / "missing"))
    assert result.returncode == 2 and "does not exist" in result.stderr
    result = run_cli("status", "--log-dir", str(workdir))
    assert result.returncode == 2 and "is not a persist log" in result.stderr


def test_corrupt_manifest_is_reported_not_a_traceback(workdir):
    daemon = write_chat(workdir / "logs")
    assert run_cli("checkpoints", "create", "--log-dir", str(daemon.root)).returncode == 0
    (path,) = daemon.log.checkpoints.glob("*.json")
    path.write_text("{not json")
    result = run_cli("checkpoints", "list", "--log-dir", str(daemon.root))
    assert result.returncode == 2 and path.name in result.stderr and "Traceback" not in result.stderr
    result = run_cli("verify", "--log-dir", str(daemon.root))
    assert result.returncode == 1 and "cannot be read" in result.stdout


def test_status_and_doctor(chat, broker, workdir):
    daemon, _ = chat
    status = json.loads(invoke("status", "--json", "--log-dir", str(daemon.log_dir)).output)
    assert status["running"] and status["pid"] == daemon.proc.pid and status["last_seq"] >= 12
    human = invoke("status", "--log-dir", str(daemon.log_dir)).output
    assert "recording" in human and f"pid {daemon.proc.pid}" in human
    cfg = workdir / "persist.toml"
    cfg.write_text(f'[daemon]\nconnect = ["{broker.backend}"]\nlog_dir = "{daemon.log_dir}"\n')
    result = run("persist-cli", "doctor", "--config", str(cfg))
    assert result.returncode == 0, result.stdout
    assert result.stdout.count("✓") == 6
    daemon.stop()
    result = run("persist-cli", "doctor", "--config", str(cfg))
    assert result.returncode == 1 and "✗ daemon" in result.stdout and "persist-daemon" in result.stdout
    stopped = json.loads(invoke("status", "--json", "--log-dir", str(daemon.log_dir)).output)
    assert stopped["running"] is False and stopped["last_checkpoint"]["reason"] == "shutdown"


def test_stats_counts_topics_and_senders(chat_log):
    daemon = chat_log
    data = json.loads(invoke("stats", "--json", "--log-dir", str(daemon.log_dir)).output)
    assert data["topics"]["agent.chat"] == 8 and data["topics"]["plan"] == 4
    assert data["senders"] == {"claude": 4, "gemini": 4, "planner": 4}


def test_menu_through_a_pseudo_terminal(chat):
    daemon, _ = chat
    assert run_cli("checkpoints", "create", "--label", "menu-test", "--log-dir", str(daemon.log_dir)).returncode == 0
    searchable = eventually(lambda: run_cli("search", "line", "--log-dir", str(daemon.log_dir)).returncode == 0)
    assert searchable, "the daemon's indexer never made the index the menu's search reads"
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(str(BIN / "persist-cli"), ["persist-cli", "menu", "--log-dir", str(daemon.log_dir)])
    try:
        read_until(fd, "Quit")
        os.write(fd, b"\x1b[B\x1b[B\x1b[B")  # arrow down three times: Status
        os.write(fd, b"\r")
        assert "recording" in read_until(fd, "press any key")
        os.write(fd, b" ")
        read_until(fd, "Quit")
        os.write(fd, b"2")  # typed number: print a checkpoint's conversation
        read_until(fd, "menu-test")
        os.write(fd, b"q")  # back out of the checkpoint list: straight back to the menu, no extra key
        read_until(fd, "Quit")
        os.write(fd, b"5")  # Search
        read_until(fd, "Search for")
        os.write(fd, b"line\r")
        assert "from planner" in read_until(fd, "press any key")
        os.write(fd, b" ")
        read_until(fd, "Quit")
        os.write(fd, b"\x03")  # Ctrl-C leaves cleanly
        _, code = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(code) == 0
    finally:
        os.close(fd)


def test_bare_persist_cli_without_a_terminal_prints_help():
    result = run_cli()
    assert result.returncode == 0 and "Commands:" in result.stdout


def test_recover_refuses_while_recording_then_repairs(chat):
    daemon, _ = chat
    result = run("persist-cli", "recover", "--log-dir", str(daemon.log_dir))
    assert result.returncode == 1 and str(daemon.proc.pid) in result.stderr
    daemon.kill9()
    with open(daemon.log.active, "ab") as f:
        f.write(b'{"v":1,"seq":')
    result = run("persist-cli", "recover", "--log-dir", str(daemon.log_dir))
    assert result.returncode == 0 and "13 torn byte(s)" in result.stdout
    assert run("persist-cli", "verify", "--log-dir", str(daemon.log_dir)).returncode == 0


@pytest.mark.parametrize("command", [
    ["persist-cli", "broker", "--frontend", "tcp://127.0.0.1:*", "--backend", "tcp://127.0.0.1:*"],
    ["python", "-m", "persist.daemon.index.indexer", "--log-dir", "{log_dir}"],
], ids=["broker", "indexer"])  # fmt: skip
def test_a_storm_of_stop_signals_stops_cleanly(command, workdir):
    """Signal handlers take no lock: a second signal inside the first never hangs the process."""
    argv = [str(BIN / command[0]), *(a.format(log_dir=workdir / "logs") for a in command[1:])]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    proc.stderr.readline()  # it is up
    for i in range(300):
        try:
            os.kill(proc.pid, signal.SIGINT if i % 2 else signal.SIGTERM)
        except ProcessLookupError:
            break
    try:
        code = proc.wait(timeout=10)
    finally:
        proc.kill()
    errors = proc.stderr.read()
    assert code == 0, f"a storm of stop signals must end in a clean exit 0, not {code}: {errors[-2000:]}"
    assert "Traceback" not in errors


def test_help_lists_each_commands_own_line_without_importing_any_command():
    import subprocess
    import sys

    import click

    from persist.cli.main import COMMANDS, cli

    ctx = click.Context(cli)
    for name, (_, line) in COMMANDS.items():  # the table's lines are the commands' own (their docstrings)
        assert cli.get_command(ctx, name).get_short_help_str(500) == line, name
    probe = ("import sys; sys.argv = ['persist-cli', '--help']\nfrom persist.cli import main\ntry:\n    main.main()\n"
             "except SystemExit:\n    pass\nprint(sorted(m for m in sys.modules if m.startswith('persist.') "
             "and m not in ('persist.cli', 'persist.cli.main', 'persist.cli.group', 'persist.cli.errors', "
             "'persist.daemon', 'persist.daemon.log', 'persist.daemon.log.lazylog')), "
             "'structlog' in sys.modules, 'orjson' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "Commands:" in out and "redact" in out and "web" in out
    assert out.splitlines()[-1] == "[] False True", out  # click, the errors and a lazy logger: no command


def test_loggers_load_structlog_on_their_first_line_set_up_as_the_cli_asked():
    import subprocess
    import sys

    probe = ("import sys\nfrom persist.daemon.log import lazylog\nlog = lazylog.get_logger('t')\n"
             "assert 'structlog' not in sys.modules\n"
             "def setup():\n    from persist.daemon import logs\n    logs.setup('json', 'warning', sys.stderr)\n"
             "lazylog.when_first_used(setup)\nassert 'structlog' not in sys.modules\n"
             "log.warning('first_line', n=1)\nlog.info('below_the_level')\nlog.warning('second_line')\n")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""  # never on stdout, where --json results go
    events = [json.loads(line)["event"] for line in r.stderr.splitlines()]
    assert events == ["first_line", "second_line"]
