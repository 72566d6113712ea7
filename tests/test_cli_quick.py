"""``persist-cli recent`` without click (``cli/quick.py``): the same output, errors and exit codes as the click
command for every command line, run by itself for the plain ones (importing neither click nor the config)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from libdir import Built
from procs import short_tmpdir

from persist.cli import quick
from persist.daemon import config

# main.main() as the persist-cli script runs it; a line on stderr says when it returned without click
QUICK = ("import sys\nfrom persist.cli import main\nsys.argv[0] = 'persist-cli'\nmain.main()\n"
         "print('QUICK', 'click' in sys.modules, 'persist.daemon.config' in sys.modules, file=sys.stderr)\n")
CLICK = "from persist.cli.group import cli\ncli(prog_name='persist-cli')\n"


@pytest.fixture(scope="module")
def log_dir():
    root = short_tmpdir()
    built = Built(root / "logs")
    for i in range(30):
        who = ("claude", "gemini", "planner")[i % 3]
        built.send(b"agent.chat" if i % 3 else b"plan",
                   b'{"sender":"%s","recipient":"critic","thread_id":"t%d","kind":"request","text":"line %d \\u00e9 '
                   b'\\u001b[31mred\\u001b[0m from %s"}' % (who.encode(), i % 2, i, who.encode()))
        if i == 10:
            built.checkpoint(label="mid")  # a $persist/ record among them
    built.send(b"raw", b"\xff\xfe binary")
    built.close()
    yield root / "logs"
    shutil.rmtree(root, ignore_errors=True)


def run(code: str, args: list[str], env: dict | None = None, cwd=None) -> tuple[int, str, str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("PERSIST_")}
    full.update(env or {})
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=full, cwd=cwd,
                       timeout=60)
    return r.returncode, r.stdout, r.stderr


def both(args: list[str], env: dict | None = None, cwd=None) -> str | None:
    """Run ``args`` both ways, assert the same result; the QUICK line if click was never imported."""
    code, out, err = run(QUICK, args, env, cwd)
    marks = [line for line in err.splitlines() if line.startswith("QUICK ")]
    err = "".join(line + "\n" for line in err.splitlines() if not line.startswith("QUICK "))
    assert (code, out, err) == run(CLICK, args, env, cwd), args
    return marks[0] if marks else None


RAN = "QUICK False False"  # returned by itself, without click or the config


@pytest.mark.parametrize("args", [
    ["recent", "--log-dir", "{d}"],
    ["--log-dir", "{d}", "recent", "-n", "5"],
    ["recent", "-n5", "--log-dir={d}", "--json"],
    ["--json", "--utc", "--log-dir", "{d}", "recent", "-r", "--no-system", "--topic", "agent"],
    ["recent", "--log-dir", "{d}", "--since", "2000-01-01", "--until", "2100-01-01 00:00", "--sender", "claude"],
    ["recent", "--log-dir", "{d}", "--kind", "request", "--thread", "t1", "-n", "100", "--system"],
    ["recent", "--log-dir", "{d}", "--topic", "nothing-has-this"],
    ["recent", "--log-dir", "{d}", "-n", "0"],
    ["recent", "--log-dir", "{d}", "--utc", "--topic="],
    ["--log-dir", "/nowhere", "recent", "--log-dir", "{d}", "--reverse"],
])
def test_a_plain_recent_runs_without_click_and_prints_what_click_prints(log_dir, args):
    assert both([a.format(d=log_dir) for a in args]) == RAN


@pytest.mark.parametrize("args", [
    ["recent", "--log-dir", "{d}", "-n", "-1"],
    ["recent", "--log-dir", "{d}", "-n", "x"],
    ["recent", "--log-dir", "/nowhere"],
    ["--json", "recent", "--log-dir", "/nowhere"],
    ["recent", "--log-dir", "{d}", "--since", "bogus"],
    ["recent", "--log-dir", "{d}", "-r", "-f"],
    ["recent", "--log-dir", "{d}", "--bogus"],
    ["recent", "--log-dir", "{d}", "extra"],
    ["recent", "--log-dir", "{d}", "--reverse=yes"],
    ["recent", "--log-dir", "{d}", "-n"],
    ["recent", "--help"],
    ["-n", "3", "recent", "--log-dir", "{d}"],
    ["--archive", "postgresql://127.0.0.1:9/x", "recent", "--log-dir", "{d}"],
    ["info", "--log-dir", "{d}"],
])
def test_anything_else_is_left_to_click(log_dir, args):
    assert both([a.format(d=log_dir) for a in args]) is None


def test_the_config_and_the_environment_choose_the_log_dir_as_for_click(log_dir, tmp_path):
    assert both(["recent", "-n", "2"], env={"PERSIST_LOG_DIR": str(log_dir)}) == RAN
    assert both(["recent", "-n", "2"], env={"PERSIST_LOG_DIR": ""}, cwd=tmp_path) is None  # "." is no log
    assert both(["recent", "-n", "2"], env={"PERSIST_FSYNC": "never"}, cwd=tmp_path) is None  # a bad value
    (tmp_path / "persist.toml").write_text(f"[daemon]\nlog_dir = '{log_dir}'\n")
    assert both(["recent", "-n", "2"], cwd=tmp_path) == "QUICK False True"  # read by the config, still no click
    (tmp_path / "persist.toml").write_text("[daemon]\nfsyncc = 1\n")
    assert both(["recent", "-n", "2", "--log-dir", str(log_dir)], cwd=tmp_path) is None


def test_it_reads_the_options_click_declares_as_click_declares_them():
    from persist.cli import read
    from persist.cli.group import cli

    known = {}
    defaults = read.recent.make_context("recent", []).params  # each as click fills it in when not given
    del defaults["follow_"]
    assert quick.DEFAULTS == {**defaults, "utc": False}  # --utc sets a switch instead of a parameter
    for command, values, flags in ((read.recent, quick.VALUES, quick.FLAGS),
                                   (cli, quick.GLOBAL_VALUES, quick.GLOBAL_FLAGS)):
        for p in command.params:
            words = [(w, True) for w in p.opts] + [(w, False) for w in p.secondary_opts]
            if p.name in ("follow_", "archive_url", "version", "help"):  # left to click
                assert not any(w in values or w in flags for w, _ in words), p.name
                continue
            for word, on in words:
                assert (flags[word] == (p.name, on if p.is_bool_flag else p.flag_value) if p.is_flag
                        else values[word] == p.name), word
                known[word] = p.name
        assert set(values) | set(flags) <= set(known)


def test_its_defaults_are_the_configs(tmp_path, monkeypatch):
    assert quick.CONFIG_FILES == tuple(str(p) for p in config.SEARCH_PATH)
    assert quick.LOG_DIR == config.DaemonSection.log_dir
    monkeypatch.chdir(tmp_path)
    for name in [k for k in os.environ if k.startswith("PERSIST_")]:
        monkeypatch.delenv(name)
    for env, flag in [({}, None), ({}, "x"), ({}, ""), ({}, "~/é"), ({"PERSIST_LOG_DIR": "y"}, None),
                      ({"PERSIST_LOG_DIR": "y"}, "x"), ({"PERSIST_LOG_DIR": ""}, None),
                      ({"PERSIST_FSYNC": "off"}, "x")]:
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            assert quick._log_dir(None, flag) == config.log_dir(None, flag), (env, flag)


def test_on_a_terminal_the_same_colours_and_width(log_dir):
    import fcntl
    import pty
    import struct
    import termios

    import click

    from persist.cli import lines

    assert lines.CYAN + "#7" + lines.RESET == click.style("#7", fg="cyan")

    def on_a_terminal(code: str) -> bytes:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 90, 0, 0))
        env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "LINES")}
        proc = subprocess.Popen([sys.executable, "-c", code, "recent", "-n", "8", "--log-dir", str(log_dir)],
                                stdout=slave, stderr=subprocess.DEVNULL, env=env)
        os.close(slave)
        out = b""
        try:
            while chunk := os.read(master, 65536):
                out += chunk
        except OSError:  # EIO: the terminal's other end is closed
            pass
        os.close(master)
        assert proc.wait(timeout=60) == 0
        return out

    quick_out, click_out = on_a_terminal(QUICK), on_a_terminal(CLICK)
    assert quick_out == click_out and b"\x1b[36m#" in quick_out and "…".encode() in quick_out

