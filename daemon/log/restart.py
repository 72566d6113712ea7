"""Starting again a daemon that a command stopped (an in-place restore): the way it was started.

Before a daemon is stopped, ``how_started`` reads its command line, its
environment and its working directory from ``/proc/<pid>``; after the work is
done ``start_again`` runs that same command, detached (its own session, output
appended to ``<log-dir>/daemon.log``), and waits until it holds the log dir's
lock and has made its control socket (opening no socket itself). A daemon that
systemd runs is never started by hand (systemd would not know it):
``RestartError`` says which unit to start. Nothing here
decides whether to stop a daemon; it only makes sure one that was stopped is
not silently left stopped.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from persist.daemon.log import lock
from persist.daemon.log.fsutil import open_private
from persist.daemon.log.layout import LogDir

SYSTEMD_VARS = ("INVOCATION_ID", "NOTIFY_SOCKET")  # set by systemd for the services it runs


class RestartError(RuntimeError):
    """The daemon was not started again; the message says why and how to start it."""


@dataclass
class Started:
    """How a daemon process was started: enough to start it again the same way."""

    pid: int
    argv: list[str]
    executable: str | None = None
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    unit: str | None = None  # the systemd unit it runs in, if any

    def command(self) -> str:
        return f"systemctl start {self.unit}" if self.unit else shlex.join(self.argv)


def how_started(pid: int | None) -> Started | None:
    """What ``/proc/<pid>`` says about how ``pid`` was started; None if it cannot be read."""
    if not pid:
        return None
    proc = Path(f"/proc/{pid}")
    try:
        argv = [a.decode(errors="surrogateescape") for a in (proc / "cmdline").read_bytes().split(b"\0")[:-1]]
    except OSError:
        return None
    if not argv:
        return None
    started = Started(pid, argv)
    try:
        started.executable = os.readlink(proc / "exe")
        started.cwd = os.readlink(proc / "cwd")
        raw = (proc / "environ").read_bytes().split(b"\0")
        started.env = dict(kv.decode(errors="surrogateescape").partition("=")[::2] for kv in raw if b"=" in kv)
    except OSError:
        pass
    if any(v in started.env for v in SYSTEMD_VARS):
        started.unit = _unit(proc) or "persist-daemon"
    return started


def _unit(proc: Path) -> str | None:
    try:
        for line in (proc / "cgroup").read_text().splitlines():
            for part in line.rsplit(":", 1)[-1].split("/"):
                if part.endswith(".service"):
                    return part
    except OSError:
        pass
    return None


def start_again(log: LogDir, started: Started, timeout: float = 15.0) -> int:
    """Run ``started``'s command again, detached; its pid once it is up in ``log``.

    ``RestartError`` (saying how to start it by hand) if it runs under systemd, cannot be run, or does
    not come up within ``timeout`` seconds.
    """
    if started.unit:
        raise RestartError(f"it ran under systemd ({started.unit}), which must start it: {started.command()}")
    began = time.time_ns()
    try:
        out = open_private(log.root / "daemon.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)  # 0600, no symlink
        try:
            proc = subprocess.Popen(started.argv, executable=started.executable, env=started.env or None,
                                    cwd=started.cwd if started.cwd and os.path.isdir(started.cwd) else None,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    start_new_session=True, close_fds=True)
        finally:
            os.close(out)
    except OSError as exc:
        raise RestartError(f"{exc.strerror or exc}; start it: {started.command()}") from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RestartError(f"it exited {proc.returncode} at once (see {log.root / 'daemon.log'}); "
                               f"start it: {started.command()}")
        if _up(log, proc.pid, began):
            return proc.pid
        time.sleep(0.05)
    raise RestartError(f"it was started again (pid {proc.pid}) but did not come up within {timeout:.0f} s; "
                       f"see {log.root / 'daemon.log'}")


def _up(log: LogDir, pid: int, began: int) -> bool:
    """``pid`` holds the log dir's lock and has made its control socket since ``began`` (no socket is opened
    here: the format library never opens one)."""
    try:
        return (lock.is_locked(log) and lock.holder_pid(log) == pid
                and os.stat(log.root / "daemon.sock").st_mtime_ns >= began)
    except OSError:
        return False
