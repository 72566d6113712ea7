"""Agent watch: which agents are registered, and when a launched daemon may stop.

``Presence`` watches ``<log-dir>/agents/`` (the files ``persist.agent``
writes through ``log.agents.register``) with watchdog and, once a second,
compares what is there with what it knew: new files are agents that joined,
vanished files (or files whose pid is gone) agents that left. ``AgentWatch``
turns those into ``$persist/agent`` records and, for a daemon the launcher
started, decides when the last agent has been gone for ``launcher.grace_s``.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from persist.daemon.log import lock
from persist.daemon.log.agents import agents_dir, pid_alive
from persist.daemon.log.fsutil import ensure_dir, read_private
from persist.daemon.log.layout import LogDir
from persist.daemon.log.lazylog import get_logger
from persist.daemon.log.watch import watch

log = get_logger("persist.daemon")


@dataclass
class Change:
    event: str  # "joined" or "left"
    info: dict[str, Any]


class Presence:
    """What agents are registered, as the daemon sees it."""

    def __init__(self, log_dir: LogDir) -> None:
        self.dir = ensure_dir(agents_dir(log_dir))
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
                if isinstance(info, dict):
                    self.known[name] = info
                    changes.append(Change("joined", info))
        if check_pids:
            for name, info in list(self.known.items()):
                pid = info.get("pid")
                if info.get("host") == socket.gethostname() and type(pid) is int and pid > 0 and not pid_alive(pid):
                    del self.known[name]
                    (self.dir / name).unlink(missing_ok=True)
                    changes.append(Change("left", {**info, "reason": "died"}))
        return changes

    def close(self) -> None:
        self.observer.stop()
        self.observer.join(timeout=2)


class AgentWatch:
    """Records agents joining and leaving; says when a launched daemon has been alone long enough."""

    def __init__(self, log_dir: LogDir, record: Callable[[str, dict[str, Any]], None], launched: bool,
                 grace_s: Callable[[], float]) -> None:
        self.log = log_dir
        self.record = record
        self.launched = launched  # started by the launcher: stop once no agent is left
        self.grace_s = grace_s
        self.presence = Presence(log_dir)
        self.idle_since: float | None = None
        self.launcher_lock_fd: int | None = None  # held from the last look until the process exits

    def tick(self) -> bool:
        """Note joins and leaves; True when a launched daemon should stop now."""
        self.note()
        if not self.launched:
            return False
        if self.presence.known:
            self.idle_since = None
        elif self.idle_since is None:
            self.idle_since = time.monotonic()
        elif time.monotonic() - self.idle_since >= self.grace_s():
            return self.still_alone()
        return False

    def note(self, rescan: bool = False) -> None:
        if rescan:
            self.presence.changed.set()
        for change in self.presence.poll(check_pids=True):
            log.info("agent_" + change.event, agent=change.info.get("agent"), pid=change.info.get("pid"))
            self.record("agent", {"event": change.event, **change.info})

    def still_alone(self) -> bool:
        """True unless an agent is registering right now.

        Holding ``launcher.lock`` from this last look until exit means a launcher
        either registered before it (and is seen) or waits until this daemon is
        gone and starts a new one: no agent is ever handed a daemon that is leaving.
        """
        fd = lock.try_lock_file(self.log.root / "launcher.lock")
        if fd is None:
            return False  # a launcher is at work: look again next second
        self.note(rescan=True)
        if self.presence.known:
            os.close(fd)
            return False
        self.launcher_lock_fd = fd
        log.info("stopping", reason="no agents left", grace_s=self.grace_s())
        return True

    @property
    def agents(self) -> list[str]:
        return sorted(str(a.get("agent")) for a in self.presence.known.values())

    def close(self) -> None:
        self.presence.close()
