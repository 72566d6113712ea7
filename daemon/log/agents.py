"""Agent presence files: one small file per registered agent under ``<log-dir>/agents/``.

The agent side writes and removes them (``register``, through
``persist.agent``); the recorder's ``agent_watch`` reads them.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from pathlib import Path

import orjson

from persist.daemon.log.fsutil import ensure_dir, write_atomically
from persist.daemon.log.layout import LogDir
from persist.daemon.log.record import iso_utc


def agents_dir(log: LogDir) -> Path:
    return log.root / "agents"


def register(log: LogDir, agent: str) -> Path:
    """Announce this process as ``agent``; returns the file to remove on release."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in agent)[:60] or "agent"
    path = ensure_dir(agents_dir(log)) / f"{safe}-{os.getpid()}-{secrets.token_hex(3)}.json"
    info = {"agent": agent, "pid": os.getpid(), "host": socket.gethostname(), "since": iso_utc(time.time_ns())}
    write_atomically(path, orjson.dumps(info))
    return path


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
