"""``ensure_daemon()``: from an agent's entry point, a daemon is recording, exactly once.

Ten agents calling it at the same instant get one daemon: each takes
``launcher.lock`` (an flock) in turn; the first finds no daemon holding the
log dir's lock and starts one, detached (its own session, output to
``daemon.log``, 0600), and waits until it answers on its control socket; the others
find it running. A daemon started here is told (``--launched``) to stop a grace
period after the last registered agent leaves; one started any other way
(systemd, by hand) is used as it is, never started twice and never stopped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from persist.daemon import config as config_module
from persist.daemon.control import answer
from persist.daemon.log import agents, lock
from persist.daemon.log.fsutil import NotOurs, open_private, read_private
from persist.daemon.log.layout import LogDir

START_TIMEOUT = 15.0


class DaemonStartError(RuntimeError):
    """The daemon did not come up; the message ends with the last lines of its log."""


class Handle:
    """An agent's registration with a running daemon; ``release()`` (or leave the ``with``) to end it."""

    def __init__(self, log: LogDir, agent_file: Path, started: bool, pid: int | None) -> None:
        self.log = log
        self.agent_file = agent_file
        self.started = started  # True if this call started the daemon
        self.pid = pid

    @property
    def log_dir(self) -> Path:
        return self.log.root

    def release(self) -> None:
        self.agent_file.unlink(missing_ok=True)

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _answers(log: LogDir) -> dict | None:
    return answer(log.control_endpoint, "ping", timeout_ms=1000)


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(read_private(path).decode(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(cannot read {path})"


def _spawn(log: LogDir, config_path: str | None, connect: list[str] | None) -> subprocess.Popen:
    args = [sys.executable, "-m", "persist.daemon", "--log-dir", str(log.root), "--launched", "--log-format", "json"]
    if config_path:
        args += ["--config", config_path]
    for endpoint in connect or []:
        args += ["--connect", endpoint]
    out = open_private(log.root / "daemon.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True, close_fds=True)
    finally:
        os.close(out)


def _wait_until_up(log: LogDir, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DaemonStartError(f"persist-daemon exited with code {proc.returncode} at start; "
                                   f"last lines of {log.root / 'daemon.log'}:\n{_log_tail(log.root / 'daemon.log')}")
        if lock.is_locked(log) and _answers(log):
            return
        time.sleep(0.05)
    proc.terminate()
    raise DaemonStartError(f"persist-daemon did not answer within {START_TIMEOUT:.0f} s; "
                           f"last lines of {log.root / 'daemon.log'}:\n{_log_tail(log.root / 'daemon.log')}")


def ensure_daemon(log_dir: str | os.PathLike | None = None, connect: str | list[str] | None = None,
                  config: str | None = None, agent: str | None = None) -> Handle:
    """Return once a daemon records ``log_dir`` (starting one if none), with this agent registered."""
    endpoints = [connect] if isinstance(connect, str) else connect
    cfg = _load_config(config, config_module.flags(log_dir, endpoints))
    log = LogDir(cfg.log_dir)
    try:
        log.create()
    except NotOurs as exc:
        raise DaemonStartError(f"cannot start persist-daemon: {exc}") from None
    agent_file = agents.register(log, agent or Path(sys.argv[0] or "agent").name)
    try:
        started, pid = _ensure_running(log, cfg.source, endpoints)
    except BaseException:
        agent_file.unlink(missing_ok=True)
        raise
    return Handle(log, agent_file, started, pid)


def _load_config(path: str | None, overrides: dict) -> config_module.Config:
    try:
        return config_module.load(path, overrides)
    except config_module.ConfigError as exc:
        raise DaemonStartError(f"cannot start persist-daemon: {exc}") from None


def _ensure_running(log: LogDir, config_path: str | None, connect: list[str] | None) -> tuple[bool, int | None]:
    fd = lock.try_lock_file(log.root / "launcher.lock", wait=START_TIMEOUT)
    if fd is None:
        raise DaemonStartError(f"another launcher holds {log.root / 'launcher.lock'} for too long")
    try:
        if lock.is_locked(log):
            if _answers(log) is None:
                _wait_answering(log)
            return False, lock.holder_pid(log)
        proc = _spawn(log, config_path, connect)
        _wait_until_up(log, proc)
        return True, proc.pid
    finally:
        os.close(fd)


def _wait_answering(log: LogDir) -> None:
    """A daemon holds the lock but is still starting (or stuck): give it a moment."""
    deadline = time.monotonic() + START_TIMEOUT
    while _answers(log) is None:
        if time.monotonic() > deadline:
            raise DaemonStartError(f"pid {lock.holder_pid(log)} holds the lock on {log.root} but does not answer on "
                                   f"{log.control_endpoint}; check its log")
        if not lock.is_locked(log):
            raise DaemonStartError(f"the daemon holding the lock on {log.root} went away while starting")
        time.sleep(0.05)
