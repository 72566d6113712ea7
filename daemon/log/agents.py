"""Agent presence: one small file per registered agent under ``<log-dir>/agents/``.

The launcher side writes and removes the files (``register``); the daemon side
(``Presence``) watches the folder with watchdog, and on its next loop turn
compares what is there with what it knew: new files are agents that joined,
vanished files (or files whose pid is gone) are agents that left. Presence only
reports; the daemon loop writes the ``$persist/agent`` records.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from persist.daemon.log.fsutil import ensure_dir, read_private, write_atomically
from persist.daemon.log.layout import LogDir
from persist.daemon.log.record import iso_utc
from persist.daemon.log.watch import watch


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


@dataclass
class Change:
    event: str  # "joined" or "left"
    info: dict[str, Any]


class Presence:
    """What agents are registered, as the daemon sees it."""

    def __init__(self, log: LogDir) -> None:
        self.dir = ensure_dir(agents_dir(log))
        self.known: dict[str, dict[str, Any]] = {}
        self.changed = threading.Event()
        self.changed.set()  # the first poll reads what is already there
        self.observer = watch(str(self.dir), lambda _event: self.changed.set())

    def poll(self, check_pids: bool) -> list[Change]:
        """Joins and leaves since the last call (``check_pids``: also notice dead agents)."""
        changes: list[Change] = []
        if self.changed.is_set():
            self.changed.clear()
            present = {p.name: p for p in self.dir.glob("*.json")}
            for name in self.known.keys() - present.keys():
                changes.append(Change("left", {**self.known.pop(name), "reason": "released"}))
            for name in present.keys() - self.known.keys():
                try:
                    info = orjson.loads(read_private(present[name]))
                except (OSError, orjson.JSONDecodeError):
                    continue  # being replaced; the next event brings it
                self.known[name] = info
                changes.append(Change("joined", info))
        if check_pids:
            for name, info in list(self.known.items()):
                if info.get("host") == socket.gethostname() and not pid_alive(int(info.get("pid", 0))):
                    del self.known[name]
                    (self.dir / name).unlink(missing_ok=True)
                    changes.append(Change("left", {**info, "reason": "died"}))
        return changes

    def close(self) -> None:
        self.observer.stop()
        self.observer.join(timeout=2)
