"""No processes: log dirs written by the format library, and persist-cli run in-process.

``Built`` writes records exactly as the recorder encodes them (``Message.from_frames``,
the built-in enrichment, ``record.encode``) through ``SegmentWriter``, and checkpoints
through ``persist.daemon.log.checkpoints``; ``cli`` drives ``persist.cli.main.cli`` with
click's ``CliRunner`` (as sqlite-utils' tests do) and answers like a finished process.
Real processes stay for what only they show: signals, crashes, sockets, the launcher.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner

from persist.cli.main import cli as persist_cli
from persist.daemon import config, enrich, logs
from persist.daemon.log import checkpoints, reader
from persist.daemon.log.layout import LogDir
from persist.daemon.log.record import Message, encode
from persist.daemon.log.store import SegmentWriter


class _CurrentStderr:
    """The library's warnings go to stderr, as ``persist-cli``'s ``main()`` sets up: to
    whatever ``sys.stderr`` is when they are written (the runner's capture during a command)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return False


logs.setup("auto", "warning", _CurrentStderr())


@dataclass
class Ran:
    """What a ``persist-cli`` run left: like ``subprocess.CompletedProcess``."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, env: dict | None = None) -> Ran:
    """``persist-cli ARGS`` in this process, with the umask its ``main()`` sets."""
    umask = os.umask(0o077)
    try:
        result = CliRunner().invoke(persist_cli, [str(a) for a in args], env=env, catch_exceptions=False)
    finally:
        os.umask(umask)
    return Ran(result.exit_code, result.stdout, result.stderr)


def cli(log_dir, *args: str, **kw) -> Ran:
    """``persist-cli ARGS --log-dir LOG_DIR`` in this process."""
    return run_cli(*args, "--log-dir", str(log_dir), **kw)


class Built:
    """A log dir as the recorder writes one, written by the format library (no daemon)."""

    def __init__(self, root: Path, start: float | None = None, step: float = 0.001) -> None:
        """Records are stamped ``start`` (default: now) and ``step`` seconds apart."""
        self.log = LogDir(Path(root))
        self.log.create()
        self.root = self.log_dir = self.log.root
        self.writer = SegmentWriter(self.log, fsync="off")
        self.writer.open()
        self.enrich = enrich.pipeline(config.Config().enrich)
        self.hasher = checkpoints.Hasher()
        self.seq = 0
        self.clock_ns = int((start if start is not None else time.time()) * 1e9)
        self.step_ns = int(step * 1e9)

    def send(self, *frames: bytes, meta: dict | None = None, at: float | None = None) -> bytes:
        """Record one message (its frames as a publisher sent them); return the line."""
        if at is not None:
            self.clock_ns = int(at * 1e9)
        msg = Message.from_frames(list(frames), self.clock_ns)
        self.clock_ns += self.step_ns
        fields = self.enrich(msg)
        fields.update(meta or {})
        self.seq += 1
        line = encode(msg, self.seq, fields)
        self.writer.append(line)
        return line

    def rotate(self) -> Path | None:
        return self.writer.rotate()

    def checkpoint(self, reason: str = "timer", label: str | None = None) -> dict:
        return checkpoints.write(self.log, checkpoints.cut_from_files(self.log), self.hasher, reason, label)

    def close(self) -> Built:
        self.writer.close()
        return self

    def records(self) -> list[reader.Entry]:
        return list(reader.records(self.log))

    def user_records(self) -> list[reader.Entry]:
        return [e for e in self.records() if not e.rec["topic"].startswith("$persist/")]


def copy_log(src: Path, dst: Path) -> LogDir:
    """A private copy of a shared log dir, for a test that changes it (modes kept)."""
    shutil.copytree(src, dst, symlinks=True)
    return LogDir(dst)
