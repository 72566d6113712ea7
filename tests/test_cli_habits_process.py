"""Issue 12's habits that only a whole ``persist-cli`` process shows: ``--version``, the console script's exit
codes, what ``recent`` imports (never rich), and tables on a real terminal (its width, ``NO_COLOR``)."""

from __future__ import annotations

import fcntl
import os
import pty
import shutil
import struct
import subprocess
import sys
import termios

import pytest

from libdir import Built
from persist.daemon import index
from procs import BIN, run, short_tmpdir


@pytest.fixture(scope="module")
def log():
    root = short_tmpdir()
    b = Built(root / "logs")
    for i in range(6):
        b.send(b"agent.chat", b'{"sender":"s%d","thread_id":"a-rather-long-thread-name-%d","text":"turn %d"}' % (i, i, i))
    b.close()
    index.update(b.log)
    yield b.log
    shutil.rmtree(root, ignore_errors=True)


def test_version():
    result = run("persist-cli", "--version")
    assert result.returncode == 0 and result.stdout.startswith("persist-cli ") and result.stdout.split()[1][0].isdigit()


def test_exit_codes_for_scripts(log):
    assert run("persist-cli", "--log-dir", str(log.root), "search", "turn").returncode == 0
    none = run("persist-cli", "--log-dir", str(log.root), "search", "xylophone")
    assert none.returncode == 1 and none.stdout == ""
    typo = run("persist-cli", "serch", "turn")
    assert typo.returncode == 2 and "did you mean search?" in typo.stderr
    assert run("persist-cli", "--log-dir", str(log.root), "recent", "--since", "whenever").returncode == 2


def test_recent_never_imports_rich(log):
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "persist.cli.main", "recent",
                             "--log-dir", str(log.root)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "turn 5" in result.stdout
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line]
    assert "persist.cli.lines" in imported  # the lines every listing prints (without click: cli/quick.py)
    assert not [m for m in imported if m.startswith("rich.")], "rich loaded (a refused attempt shows as bare 'rich')"


def on_terminal(args: list[str], columns: int, env: dict[str, str]) -> str:
    """What ``persist-cli ARGS`` writes to a terminal ``columns`` wide."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "LINES")} | env | {"TERM": "xterm"}
    proc = subprocess.Popen([str(BIN / "persist-cli"), *args], stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    out = b""
    try:
        while chunk := os.read(master, 65536):
            out += chunk
    except OSError:  # EIO: the process closed the terminal
        pass
    finally:
        os.close(master)
    assert proc.wait(timeout=30) == 0, out
    return out.decode()


def test_tables_fit_the_terminal_and_honour_no_color(log):
    args = ["threads", "--log-dir", str(log.root)]
    plain = on_terminal(args, 60, {"NO_COLOR": "1"})
    assert "a-rather-long-thread-name-5" in plain and "\x1b[" not in plain, "the id is kept whole"
    assert max(len(line) for line in plain.splitlines()) <= 60, plain
    coloured = on_terminal(args, 200, {})
    assert "\x1b[" in coloured and "a-rather-long-thread-name-5" in coloured
    piped = run("persist-cli", *args, env={"COLUMNS": "40"})
    assert "a-rather-long-thread-name-5" in piped.stdout and "\x1b[" not in piped.stdout, "never cut when piped"
